"""The corruptions of ImageNet-C (Hendrycks & Dietterich, ICLR 2019), their groups and severities; pure.

The lists are imagecorruptions 1.1.2's `get_corruption_names('common')` and `('validation')` in its order (a test
checks them against the installed package), written out so that reading them needs neither NumPy nor the package.
"""

from __future__ import annotations

from ellbench.errors import EllbenchError

CORRUPTIONS_BY_GROUP = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
COMMON_CORRUPTIONS = tuple(name for group in CORRUPTIONS_BY_GROUP.values() for name in group)  # the 15 of mCE
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # the 4 held-out ones
ALL_CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
CORRUPTION_GROUPS = {
    **{name: group for group, names in CORRUPTIONS_BY_GROUP.items() for name in names},
    **dict.fromkeys(EXTRA_CORRUPTIONS, "extra"),
}
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # imagecorruptions refuses smaller images
# Who computes the corrupted pixels: imagecorruptions 1.1.2 (NumPy, one image at a time; the published recipe) or
# ellbench's batched torch port of it (ellbench.corruptions.torch_backend).
BACKENDS = ("imagecorruptions", "torch")
DEFAULT_BACKEND = "imagecorruptions"


def check_corruption(corruption: str, severity: int) -> None:
    """Raise EllbenchError for an unknown corruption name or a severity outside 1..5."""
    if corruption not in ALL_CORRUPTIONS:
        raise EllbenchError(f"unknown corruption {corruption!r}; choose from {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise EllbenchError(f"severity must be an integer in 1..5, got {severity!r}")


def check_backend(backend: str) -> str:
    """The backend name, or EllbenchError for one that is not in BACKENDS."""
    if backend not in BACKENDS:
        raise EllbenchError(f"unknown corruption backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend
