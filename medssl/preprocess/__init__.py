"""Preprocessing: slides and volumes into the medssl Zarr cache."""

from medssl.preprocess.cache import SCHEMA_VERSION, SlideCache, VolumeCache
from medssl.preprocess.cache_volumes import VolumeSummary, cache_volumes
from medssl.preprocess.tile import StorageParams, TileSummary, tile_slides
from medssl.preprocess.tiling import TilingParams
from medssl.preprocess.tissue import TissueParams
from medssl.preprocess.volumes import VolumeParams

__all__ = [
    "SCHEMA_VERSION",
    "SlideCache",
    "StorageParams",
    "TileSummary",
    "TilingParams",
    "TissueParams",
    "VolumeCache",
    "VolumeParams",
    "VolumeSummary",
    "cache_volumes",
    "tile_slides",
]
