"""Real photographs for checks and benchmarks: scikit-image's sample photos, cropped and resized several ways.

scikit-image ships these files inside its wheel, so the set is the same offline on every machine. Each photograph
is one crop (a fraction of the short side, at a fixed position) of one sample, resized to a square with Pillow's
Lanczos filter; grey samples are repeated over three channels.
"""

from __future__ import annotations

import numpy as np

COLOUR_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                  "stereo_motorcycle")
GREY_SAMPLES = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock", "page")
# (fraction of the short side, anchor): anchor (0, 0) is the top-left corner, (1, 1) the bottom-right.
CROPS = ((1.0, (0.5, 0.5)), (0.6, (0.0, 0.0)), (0.6, (1.0, 1.0)), (0.45, (0.5, 0.5)), (0.75, (0.0, 1.0)),
         (0.5, (1.0, 0.0)), (0.35, (0.3, 0.7)), (0.85, (0.7, 0.3)))


def _sample(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left view, right view, disparity)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image.astype(np.uint8))


def sample_photographs(count: int = 64, size: int = 224) -> np.ndarray:
    """`count` distinct real photographs, uint8 [count, size, size, 3], always the same for the same arguments.

    Photograph k is crop k // 16 (CROPS, cycling) of sample k % 16 (colour samples, then grey ones).
    """
    from PIL import Image

    samples = COLOUR_SAMPLES + GREY_SAMPLES
    if count < 1 or size < 1:
        raise ValueError(f"count and size must be positive, got {count} and {size}")
    cache: dict[str, np.ndarray] = {}
    photos = np.empty((count, size, size, 3), dtype=np.uint8)
    for k in range(count):
        name = samples[k % len(samples)]
        fraction, (anchor_y, anchor_x) = CROPS[(k // len(samples)) % len(CROPS)]
        if name not in cache:
            cache[name] = _sample(name)
        image = cache[name]
        height, width = image.shape[:2]
        side = max(1, round(fraction * min(height, width)))
        top, left = round(anchor_y * (height - side)), round(anchor_x * (width - side))
        crop = Image.fromarray(image[top:top + side, left:left + side])
        photos[k] = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
    return photos
