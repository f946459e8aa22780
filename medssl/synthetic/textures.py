"""Labelled texture tiles cut from real stained-tissue pixels (scikit-image's IHC image): the smallest
honest check that pretraining learns something a random encoder does not know.

Tiles are classed by their DAB (brown) stain density: epithelium (membranes stained) or stroma
(counterstain only). The left part of the image gives training tiles, the right part held-out ones,
so no pixel is shared. ``stain_shift`` re-colours the held-out tiles the way another lab's staining
and scanner would: a random encoder's features follow colour, a pretrained one's should follow tissue.
"""

from __future__ import annotations

import numpy as np
import torch

from medssl.data.transforms import ColorJitterd, HEDJitterd
from medssl.data.view_ops import Compose

EPITHELIUM, STROMA = 0, 1


def ihc_texture_tiles(
    n: int, size: int = 32, held_out: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 tiles ``[n, 3, size, size]`` and labels (0 epithelium, 1 stroma) from the left 60 % of
    the IHC image (``held_out=False``) or the right 40 % (``held_out=True``)."""
    from skimage import color, data

    image = data.immunohistochemistry()
    dab = color.rgb2hed(image)[..., 2]
    height, width = dab.shape
    x_range = (int(width * 0.6), width - size) if held_out else (0, int(width * 0.6) - size)
    rng = np.random.default_rng([seed, int(held_out)])
    tiles, labels = [], []
    while len(tiles) < n:
        y, x = int(rng.integers(0, height - size)), int(rng.integers(*x_range))
        density = dab[y : y + size, x : x + size].mean()
        patch = image[y : y + size, x : x + size]
        if density > 0.06:
            label = EPITHELIUM
        elif density < 0.02 and patch.mean() < 225:  # counterstained tissue, not empty glass
            label = STROMA
        else:
            continue  # ambiguous borders are left out
        tiles.append(patch)
        labels.append(label)
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def stain_shift(tiles: torch.Tensor, hue: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Each tile re-coloured at random (brightness, contrast, saturation, hue, H&E-DAB stain densities);
    float 0..1 like the SSL views."""
    shift = Compose([ColorJitterd(0.4, 0.4, 0.4, hue), HEDJitterd(0.1, 0.1)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([shift({"image": tile})["image"] for tile in tiles])
