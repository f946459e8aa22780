"""Tiles cut straight from a block's region into the write slab are the tiles ``read_block`` cuts."""

from __future__ import annotations

import numpy as np

from medssl.preprocess.tile_cuts import TileCuts, copy_tiles, tiles_array


def _cut_one_by_one(region: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """The cut ``read_block`` made before (one tile array per block), the oracle."""
    return np.stack([region[y : y + size, x : x + size] for x, y in zip(xs, ys)])


def test_cuts_copied_in_pieces_equal_the_one_by_one_cut(rng):
    size, step = 7, 5  # overlapping tiles (stride < size), as with --overlap
    region = rng.integers(0, 256, size=(40, 33, 3), dtype=np.uint8)
    gx, gy = np.array([0, 1, 3, 5, 0, 2, 5]), np.array([0, 0, 0, 0, 6, 6, 3])
    cuts = TileCuts(region, gx * step, gy * step, size)
    expected = _cut_one_by_one(region, gx * step, gy * step, size)
    np.testing.assert_array_equal(tiles_array(cuts), expected)
    assert len(cuts) == len(expected)
    for start, stop in [(0, 7), (0, 3), (3, 4), (4, 7), (6, 7)]:  # a block split across write slabs
        slab = np.zeros((stop - start + 2, size, size, 3), dtype=np.uint8)
        copy_tiles(cuts, slab[1 : 1 + stop - start], start)
        np.testing.assert_array_equal(slab[1 : 1 + stop - start], expected[start:stop])
        assert not slab[0].any() and not slab[-1].any()  # nothing written outside the destination
        plain = np.zeros_like(slab[1 : 1 + stop - start])
        copy_tiles(expected, plain, start)  # grids that read their own tiles yield plain arrays
        np.testing.assert_array_equal(plain, expected[start:stop])
