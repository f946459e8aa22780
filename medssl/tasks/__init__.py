"""Downstream and slide-level tasks built on trained medssl models: whole-slide inference and heatmaps
(:mod:`medssl.tasks.slide_inference`); classification and segmentation fine-tuning land here next."""
