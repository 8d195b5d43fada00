"""A folder of real photographs in ImageNet validation layout, for loader and evaluation benchmarks.

scikit-image's sample photographs, each file a different seeded crop resized to an ImageNet-like size (long side
333-500 px, assorted aspect ratios, a few grey images), saved as JPEG quality 90 in <root>/<wnid>/*.JPEG over ten
ImageNet-1k classes. The same (count, seed) gives the same files.

    python benchmarks/photo_folder.py /tmp/photos --count 512
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat")
GREY = ("camera", "moon")  # ImageNet holds some greyscale JPEGs too; every loader converts them to RGB
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668",
         "n01514859", "n01518878")  # the first ten ImageNet-1k classes


def make_photo_folder(root: str | Path, count: int = 256, seed: int = 0) -> Path:
    """Write `count` JPEGs under root/<wnid>/ (skipping files already there) and return root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    sources = {name: np.asarray(getattr(skimage.data, name)()) for name in COLOUR + GREY}
    for k in range(count):
        name = GREY[k % len(GREY)] if k % 16 == 15 else COLOUR[k % len(COLOUR)]
        pixels = sources[name]
        height, width = pixels.shape[:2]
        crop_h, crop_w = (int(side * rng.uniform(0.55, 1.0)) for side in (height, width))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        long_side = int(rng.integers(333, 501))
        aspect = rng.uniform(0.66, 1.5)  # width / height
        size = (long_side, max(64, int(long_side / aspect))) if aspect >= 1 else (max(64, int(long_side * aspect)),
                                                                                   long_side)
        path = root / WNIDS[k % len(WNIDS)] / f"ILSVRC2012_val_{k:08d}.JPEG"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.ascontiguousarray(pixels[top:top + crop_h, left:left + crop_w]))
        image.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_photo_folder(args.root, args.count, args.seed)
    files = sorted(args.root.glob("*/*.JPEG"))
    print(f"{len(files)} JPEGs in {args.root}, {sum(f.stat().st_size for f in files) / len(files) / 1024:.0f} KiB "
          "on average")


if __name__ == "__main__":
    main()
