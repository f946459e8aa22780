"""Slide-level learning from slide labels (multiple-instance learning): shared evaluation of whole
bags piece by piece, slide and instance metrics, instance truth from lesion masks, and heatmaps. The
models themselves live with the other methods: :mod:`medssl.methods.abmil`, :mod:`medssl.methods.ins`."""

from medssl.mil.base import SlideClassifier, bag_probability, slide_metrics
from medssl.mil.heatmaps import heatmap_overlay, write_heatmap
from medssl.mil.truth import LesionMasks, lesion_fraction

__all__ = ["LesionMasks", "SlideClassifier", "bag_probability", "heatmap_overlay", "lesion_fraction",
           "slide_metrics", "write_heatmap"]
