"""The medssl demo: tile a small cohort of slides made from real stained-tissue pixels, and cache a real
MRI volume (shipped with nibabel) and a CT phantom.

Run through ``bash pipelines/demo.sh`` (which installs first) or, in an installed environment,
``python pipelines/demo.py --out demo-output``. Re-running resumes: finished slides are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medssl.cli import main as medssl_main
from medssl.synthetic.slides import write_demo_cohort
from medssl.synthetic.volumes import ct_phantom, grid_affine, nibabel_data, write_nifti


def run(out: Path, n_slides: int) -> int:
    slides = out / "slides"
    if not slides.exists() or len(list(slides.iterdir())) < n_slides:
        print(f"[1/3] writing {n_slides} demo slides (40×, 0.25 µm/px, JPEG pyramids) to {slides}")
        write_demo_cohort(slides, n_slides=n_slides)
    else:
        print(f"[1/3] demo slides already in {slides}")
    print("[2/3] medssl tile --mpp 0.5 --tile-size 224")
    status = medssl_main(
        [
            "tile", str(slides), "--out", str(out / "cache"),
            "--mpp", "0.5", "--tile-size", "224", "--workers", "2",
        ]
    )
    print("[3/3] medssl cache-volumes: nibabel's anatomical.nii (MRI) and a CT phantom")
    manifest = write_volume_inputs(out / "volumes")
    status |= medssl_main(["cache-volumes", str(manifest), "--out", str(out / "volume-cache")])
    print(f"\nQC pictures: {out / 'cache' / 'qc'} (tiles over thumbnails), {out / 'volume-cache' / 'qc'} (volumes)")
    print(f"Inspect the caches: medssl info {out / 'cache'}; medssl info {out / 'volume-cache'}")
    return status


def write_volume_inputs(folder: Path) -> Path:
    """A CSV listing a real MRI shipped with nibabel and a generated CT phantom with its lung label."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = folder / "ct-phantom.nii.gz"
    if not ct.exists():
        volume = ct_phantom((160, 160, 48))
        write_nifti(ct, volume, grid_affine((1.5, 1.5, 4.0)))
        lungs = ((volume < -600) & (volume > -950)).astype(np.uint8)
        write_nifti(folder / "ct-phantom-lungs.nii.gz", lungs, grid_affine((1.5, 1.5, 4.0)))
    manifest = folder / "volumes.csv"
    manifest.write_text(
        "volume_id,image,label,modality\n"
        f"mri-anatomical,{nibabel_data('anatomical.nii')},,MR\n"
        "ct-phantom,ct-phantom.nii.gz,ct-phantom-lungs.nii.gz,CT\n"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--slides", type=int, default=4)
    args = parser.parse_args(argv)
    return run(args.out, args.slides)


if __name__ == "__main__":
    sys.exit(main())
