"""The medssl Zarr cache: the one place that knows the on-disk layout.

- :mod:`medssl.cache.store`: schema version, parameters per kind, and the write protocol (items staged,
  then committed by atomic rename; a re-run with other parameters refused);
- :mod:`medssl.cache.readers`: :class:`SlideCache`, :class:`VolumeCache`, :class:`EmbeddingCache`;
- :mod:`medssl.cache.raw`: fast reads that bypass zarr-python (raw tile chunks, memory-mapped volumes);
- :mod:`medssl.cache.codecs`: the JPEG tile codec (registered with Zarr on import, so readers decode it).
"""

from medssl.cache import codecs as codecs  # registers the JPEG codec with Zarr
from medssl.cache.raw import TileReader
from medssl.cache.readers import CacheReader, DenseMap, EmbeddingCache, SlideCache, VolumeCache, read_manifests
from medssl.cache.store import SCHEMA_VERSION, store_path, stored_kinds, stored_params

__all__ = [
    "SCHEMA_VERSION",
    "CacheReader",
    "DenseMap",
    "EmbeddingCache",
    "SlideCache",
    "TileReader",
    "VolumeCache",
    "read_manifests",
    "store_path",
    "stored_kinds",
    "stored_params",
]
