"""Preprocessing: slides and volumes into the medssl Zarr cache."""

from medssl.preprocess.cache import SCHEMA_VERSION, SlideCache
from medssl.preprocess.tile import StorageParams, TileSummary, tile_slides
from medssl.preprocess.tiling import TilingParams
from medssl.preprocess.tissue import TissueParams

__all__ = [
    "SCHEMA_VERSION",
    "SlideCache",
    "StorageParams",
    "TileSummary",
    "TilingParams",
    "TissueParams",
    "tile_slides",
]
