"""scikit-learn's digits (1,797 8 x 8 greyscale images of the digits 0-9, shipped inside the
scikit-learn wheel: no download) as a folder of your own captioned images: one PNG per image,
upscaled, and a URL list of file:// URLs with a caption from each label ("a photo of the digit
seven") and the label itself. The data set of docs/YOUR_DATA.md and of its end-to-end test.

    python -m pipeline.digits_data --out runs/digits/images --urls runs/digits/urls.csv --n 600

A local file needs `local_files: true` in the pipeline config (configs/data/local_captions.yaml):
img2dataset opens file:// URLs with urllib as it opens http URLs."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE = "a photo of the digit {}"


def write(out: Path, urls: Path, n: int | None = None, size: int = 64, seed: int = 0) -> int:
    """The first n digits of a seeded order (all without n) -> PNGs under out and the URL list
    (url, caption, label). Returns the number written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:n]
    out.mkdir(parents=True, exist_ok=True)
    urls.parent.mkdir(parents=True, exist_ok=True)
    with open(urls, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption", "label"])
        for i in order:
            # 0..16 intensities, ink dark on white like a scanned digit; nearest keeps the strokes crisp
            pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
            path = (out / f"digit-{i:04d}.png").resolve()
            Image.fromarray(pixels).convert("RGB").resize((size, size), Image.NEAREST).save(path)
            name = NAMES[int(digits.target[i])]
            w.writerow([path.as_uri(), TEMPLATE.format(name), name])
    return len(order)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--urls", required=True, help="the URL list to write (.csv)")
    p.add_argument("--n", type=int, help="how many images (default: all 1,797)")
    p.add_argument("--size", type=int, default=64, help="pixels per side after upscaling")
    args = p.parse_args(argv)
    n = write(Path(args.out), Path(args.urls), args.n, args.size)
    print(f"wrote {n} images to {args.out} and their URL list to {args.urls}")


if __name__ == "__main__":
    main()
