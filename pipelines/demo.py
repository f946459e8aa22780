"""The medssl demo: generate a small cohort of pyramidal slides from real stained-tissue pixels and tile it.

Run through ``bash pipelines/demo.sh`` (which installs first) or, in an installed environment,
``python pipelines/demo.py --out demo-output``. Re-running resumes: finished slides are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medssl.cli import main as medssl_main
from medssl.synthetic.slides import write_demo_cohort


def run(out: Path, n_slides: int) -> int:
    slides = out / "slides"
    if not slides.exists() or len(list(slides.iterdir())) < n_slides:
        print(f"[1/2] writing {n_slides} demo slides (40×, 0.25 µm/px, JPEG pyramids) to {slides}")
        write_demo_cohort(slides, n_slides=n_slides)
    else:
        print(f"[1/2] demo slides already in {slides}")
    print("[2/2] medssl tile --mpp 0.5 --tile-size 224")
    status = medssl_main(
        [
            "tile", str(slides), "--out", str(out / "cache"),
            "--mpp", "0.5", "--tile-size", "224", "--workers", "2",
        ]
    )
    print(f"\nQC pictures (kept tiles over each thumbnail): {out / 'cache' / 'qc'}")
    print(f"Inspect the cache: medssl info {out / 'cache'}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--slides", type=int, default=4)
    args = parser.parse_args(argv)
    return run(args.out, args.slides)


if __name__ == "__main__":
    sys.exit(main())
