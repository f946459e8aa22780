"""How well marker-ink detection separates pen strokes from stained tissue, on synthetic slides.

Usage::

    python benchmarks/bench_pen_ink.py            # 3 multistain cases per stain, masks at 8 and 2 µm/px

Rows:

- clean tissue: the largest share of tissue-or-ink pixels flagged as ink (``pen_fraction``) on thumbnails of
  scikit-image's real IHC image and of H&E, ER (nuclear DAB), HER2 (membranous DAB) and Ki-67 sections
  re-stained from it (:mod:`medssl.synthetic.multistain`), per stain, at two mask resolutions;
- inked slide (:func:`medssl.synthetic.pen.marked_slide`, green, blue and black strokes): IoU and recall of
  the ink mask against the drawn strokes, overall and with one colour enabled at a time.
"""

from __future__ import annotations

import argparse

import numpy as np

from medssl.preprocess import TissueParams
from medssl.preprocess.tissue import find_tissue
from medssl.synthetic.multistain import StainedSection, random_case
from medssl.synthetic.pen import marked_slide
from medssl.synthetic.slides import Ellipse, SlideLayout

IHC = SlideLayout(width=4096, height=3072, tissue=[Ellipse(1100, 1500, 800, 1100), Ellipse(3150, 1500, 800, 900)])
STAINS = ("HE", "ER", "HER2", "KI67")


def clean_tissue(mask_mpp: float, cases: int) -> dict[str, float]:
    """The worst ink share per stain on slides without ink."""
    ds = mask_mpp / 0.25  # the IHC layout is drawn at 0.25 µm/px
    params = TissueParams(mask_mpp=mask_mpp)
    worst = {"IHC": find_tissue(IHC.render(0, 0, int(4096 / ds), int(3072 / ds), ds), params).pen_fraction}
    ds = mask_mpp / 0.5  # multistain slides are 0.5 µm/px
    for seed in range(cases):
        case = random_case(2048, 1536, positive=True, stains=STAINS, rng=np.random.default_rng(seed))
        for stain in STAINS:
            thumb = StainedSection(case, stain).render(0, 0, int(2048 / ds), int(1536 / ds), ds)
            worst[stain] = max(worst.get(stain, 0.0), find_tissue(thumb, params).pen_fraction)
    return worst


def inked_slide() -> None:
    slide, mpp, mask_mpp = marked_slide(), 4.0, 8.0
    ds = mask_mpp / mpp
    thumb = slide.render(0, 0, int(slide.width / ds), int(slide.height / ds), ds)
    ys, xs = np.mgrid[0 : thumb.shape[0], 0 : thumb.shape[1]]
    x, y = (xs + 0.5) * ds, (ys + 0.5) * ds
    drawn = slide.ink_at(x, y)
    ink = find_tissue(thumb, TissueParams()).ink
    print(
        f"inked slide, all colours: IoU {(ink & drawn).sum() / (ink | drawn).sum():.3f}, "
        f"recall {(ink & drawn).sum() / drawn.sum():.3f}"
    )
    for stroke in slide.strokes:
        alone = find_tissue(thumb, TissueParams(pen_ink=(stroke.colour,))).ink
        truth = stroke.contains(x, y)
        print(f"  {stroke.colour} only: recall {(alone & truth).sum() / truth.sum():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="marker-ink detection vs stained tissue, on synthetic slides")
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    for mask_mpp in (8.0, 2.0):
        worst = clean_tissue(mask_mpp, args.cases)
        print(
            f"clean tissue, mask {mask_mpp:g} µm/px, worst ink share: "
            + ", ".join(f"{k} {v:.4%}" for k, v in worst.items())
        )
    inked_slide()


if __name__ == "__main__":
    main()
