"""Every picture medssl draws: QC pictures of preprocessing runs (:mod:`medssl.viz.qc`) and instance
heatmaps over slide thumbnails (:mod:`medssl.viz.heatmaps`). Pictures are PNGs written atomically."""
