"""Datasets, samplers and transforms that feed training from the medssl caches."""
