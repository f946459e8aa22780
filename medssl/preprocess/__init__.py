"""Preprocessing: slides and volumes into the medssl Zarr cache (read it with :mod:`medssl.cache`)."""

from medssl.preprocess.cache_volumes import VolumeSummary, cache_volumes
from medssl.preprocess.regions import RegionParams
from medssl.preprocess.tile import StorageParams, TileSummary, tile_slides
from medssl.preprocess.tiling import TilingParams
from medssl.preprocess.tissue import TissueParams
from medssl.preprocess.volumes import VolumeParams

__all__ = [
    "RegionParams",
    "StorageParams",
    "TileSummary",
    "TilingParams",
    "TissueParams",
    "VolumeParams",
    "VolumeSummary",
    "cache_volumes",
    "tile_slides",
]
