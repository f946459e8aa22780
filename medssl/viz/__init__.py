"""Every picture medssl draws, and the small readers the notebooks in ``notebooks/`` plot from. Pictures are numpy
arrays or PIL images (PNGs written atomically); medssl itself never imports matplotlib or pandas.

- :mod:`medssl.viz.qc`: QC pictures of preprocessing runs (tiles over thumbnails, volume montages);
- :mod:`medssl.viz.slides`: a tile cache's slide table, per-tile columns, tile mosaics, scale bars in µm;
- :mod:`medssl.viz.volumes`: orthogonal views at physical aspect with label outlines, voxel grids before and
  after caching, intensity histograms before and after normalisation;
- :mod:`medssl.viz.segmentation`: scans, labels and ``medssl segment`` predictions read from NIfTI as ``[Z, Y, X]``
  RAS volumes on their own grid, and the axial slices through a structure;
- :mod:`medssl.viz.heatmaps`: instance heatmaps over slide thumbnails, lesion masks resampled onto them;
- :mod:`medssl.viz.runs`: a run's Lightning logs (CSV or TensorBoard) read back as numbers;
- :mod:`medssl.viz.embedding_map`: sampled embeddings with their items' attributes, PCA maps, neighbour agreement;
- :mod:`medssl.viz.matching`: dense maps and slide vectors read from embedding stores, for landmark matching
  (:mod:`medssl.eval.landmarks`) and cross-stain retrieval (:mod:`medssl.eval.retrieval`);
- :mod:`medssl.viz.charts`: small line charts (label efficiency).
"""
