"""Known geometry shared by tests (ground truth for tissue and scale checks)."""

from medssl.synthetic.slides import Ellipse, SlideLayout

#: Two tissue pieces with known geometry (level-0 pixels of a 4096 × 3072 slide), 100 µm apart
#: at 0.25 µm/px: wider than the default closing bridges.
LAYOUT = SlideLayout(
    width=4096,
    height=3072,
    tissue=[Ellipse(1100, 1500, 800, 1100), Ellipse(3150, 1500, 800, 900)],
)
