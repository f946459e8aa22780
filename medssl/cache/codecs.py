"""A JPEG array-to-bytes codec for Zarr v3, so lossy tile caches stay ordinary ``uint8 [N, T, T, 3]`` arrays.

Each chunk must be one RGB tile (``[1, T, T, 3]``, typically the inner chunk of a shard). Encoding and
decoding go through imagecodecs (libjpeg-turbo). The codec is registered under the name
``medssl.jpeg`` when medssl.preprocess is imported; readers need medssl installed to decode such a cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDArrayLike, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+
    from zarr.core.array_spec import ArraySpec

CODEC_NAME = "medssl.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Lossy JPEG for chunks that are single RGB tiles; ``quality`` is libjpeg's 1..100."""

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> "Self":
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        options: dict[str, Any] = config or {}  # JSON values; __init__ checks them
        return cls(**options)

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:  # noqa: ANN001 (zarr's signature)
        chunk_shape = getattr(chunk_grid, "chunk_shape", None)
        if np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} needs uint8 data, got {dtype}")
        if chunk_shape is not None and (len(chunk_shape) != 4 or chunk_shape[0] != 1 or chunk_shape[3] != 3):
            raise ValueError(f"{CODEC_NAME} needs chunks of one RGB tile [1, H, W, 3], got {chunk_shape}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: "ArraySpec") -> NDBuffer:
        pixels = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes())
        # cast: NumPy arrays are the NDArrayLike Zarr means, but under NumPy 2's stubs ndarray's __getitem__
        # and reshape return another shape type than the protocol's Self, so the stubs reject the match
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(cast(NDArrayLike, pixels.reshape(chunk_spec.shape)))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: "ArraySpec") -> Buffer | None:
        tile = np.ascontiguousarray(chunk_array.as_numpy_array().reshape(chunk_spec.shape[1:]))
        encoded = imagecodecs.jpeg8_encode(tile, level=self.quality)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: "ArraySpec") -> int:
        raise NotImplementedError  # variable size


register_codec(CODEC_NAME, JpegCodec)
