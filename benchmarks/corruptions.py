"""Generated ImageNet-C: 2 worker processes vs 1, and a cached run vs an uncached one, measured side by side.

Builds a clean ImageNet-style folder of real photographs (scikit-image's samples, varied so every file differs),
then times GeneratedImageNetC (resize 256, centre crop 224, corrupt, JPEG 85, write to the cache) plus reading
every image back, for each configuration, alternating configurations across repeats to share the machine's noise.
Targets on 2 cores: 2 workers / 1 worker >= 1.7; uncached / cached >= 10.

    .venv/bin/python benchmarks/corruptions.py [--images 12] [--repeats 2] [--corruptions glass_blur,zoom_blur]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from ellbench.corruptions import GeneratedImageNetC

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
WNIDS = ("n01440764", "n01443537", "n02123045")


def build_clean_folder(root: Path, count: int) -> None:
    """`count` distinct JPEGs in ImageNet validation layout: photos cut at different offsets, spread over 3 wnids."""
    for k in range(count):
        image = np.asarray(getattr(skimage.data, PHOTOS[k % len(PHOTOS)])())
        offset = 8 * (k // len(PHOTOS))
        folder = root / WNIDS[k % len(WNIDS)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[offset:, offset:]).save(folder / f"ILSVRC2012_val_{k:08d}.JPEG", quality=90)


def timed_generation(clean: Path, cache: Path, corruptions: list[str], workers: int) -> float:
    """Seconds to build every (corruption, severity 3) data set and read all its images."""
    start = time.perf_counter()
    for corruption in corruptions:
        dataset = GeneratedImageNetC(clean, corruption, 3, cache_dir=cache, workers=workers)
        for index in range(len(dataset)):
            dataset[index]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corruptions", default="glass_blur,zoom_blur,motion_blur,gaussian_noise")
    args = parser.parse_args()
    corruptions = args.corruptions.split(",")
    times: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "cached": []}
    with tempfile.TemporaryDirectory() as scratch:
        clean = Path(scratch) / "val"
        build_clean_folder(clean, args.images)
        for repeat in range(args.repeats):
            for workers in (1, 2) if repeat % 2 == 0 else (2, 1):  # alternate order: share drifting load fairly
                cache = Path(scratch) / f"cache-{repeat}-{workers}"
                times[f"{workers} worker{'s' if workers > 1 else ''}"].append(
                    timed_generation(clean, cache, corruptions, workers))
                if workers == 2:
                    times["cached"].append(timed_generation(clean, cache, corruptions, workers))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"generated ImageNet-C: {args.images} images x {', '.join(corruptions)} (severity 3), "
          f"{os.cpu_count()} CPUs visible, median of {args.repeats} alternating repeats")
    for name, values in times.items():
        print(f"  {name:10s} {median[name]:8.3f} s   (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"  speed-up 2 workers / 1 worker : {median['1 worker'] / median['2 workers']:6.2f}x   (target >= 1.7)")
    print(f"  speed-up uncached / cached    : {median['2 workers'] / median['cached']:6.1f}x   (target >= 10)")


if __name__ == "__main__":
    main()
