"""imagecorruptions 1.1.2 mended to run on today's stack, without changing numpy, skimage or sys.modules.

It imports pkg_resources (gone from setuptools >= 81), uses np.float_ (removed in NumPy 2; breaks fog) and calls
skimage's gaussian(..., multichannel=True) (removed; breaks glass_blur and gaussian_blur). It also calls skimage's
random_noise, which no longer draws from NumPy's global RNG (impulse_noise would ignore our seed). All four are
mended in the imagecorruptions module's own namespace.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import skimage
import skimage.filters
import skimage.util


class _PatchedModule(types.ModuleType):
    """Stand-in for a module inside imagecorruptions: given attributes replaced, the rest read from the original."""

    def __init__(self, original: types.ModuleType, **replacements):
        super().__init__(original.__name__)
        self._original = original
        self.__dict__.update(replacements)

    def __getattr__(self, name: str):
        return getattr(self._original, name)


def _pkg_resources_shim() -> types.ModuleType:
    """The one pkg_resources function imagecorruptions uses: a file next to a module or inside a package."""

    def resource_filename(module_name: str, resource: str) -> str:
        origin = importlib.util.find_spec(module_name).origin  # a package's __init__.py or a module's .py
        return str(Path(origin).parent.joinpath(*Path(resource).parts))

    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = resource_filename
    return shim


def _gaussian_without_multichannel(image, *args, multichannel: bool | None = None, **kwargs):
    """skimage.filters.gaussian accepting the removed `multichannel=True` (now channel_axis=-1)."""
    if multichannel:
        kwargs.setdefault("channel_axis", -1)
    return skimage.filters.gaussian(image, *args, **kwargs)


def _random_noise_from_global_rng(image, mode="gaussian", rng=None, **kwargs):
    """skimage.util.random_noise seeded from NumPy's global RNG, as it was when imagecorruptions was written."""
    if rng is None:
        rng = int(np.random.randint(2**31 - 1))
    return skimage.util.random_noise(image, mode=mode, rng=rng, **kwargs)


def _missing_module_stand_ins() -> dict[str, types.ModuleType]:
    """Stand-ins for the modules imagecorruptions imports that this environment no longer has."""
    import scipy.ndimage

    stand_ins = {}
    if importlib.util.find_spec("pkg_resources") is None:
        stand_ins["pkg_resources"] = _pkg_resources_shim()
    if importlib.util.find_spec("scipy.ndimage.interpolation") is None:  # slated for removal in SciPy 2.0
        stand_ins["scipy.ndimage.interpolation"] = scipy.ndimage
    return {name: module for name, module in stand_ins.items() if name not in sys.modules}


def _import_imagecorruptions() -> types.ModuleType:
    """Import imagecorruptions with its breakages on today's stack mended; idempotent."""
    stand_ins = _missing_module_stand_ins()
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.interpolation.*", category=DeprecationWarning)
            import imagecorruptions
            from imagecorruptions import corruptions as implementation
    finally:
        for name in stand_ins:  # only needed while imagecorruptions' own imports ran
            del sys.modules[name]
    if not isinstance(implementation.np, _PatchedModule):
        implementation.np = _PatchedModule(np, float_=np.float64)  # np.float_ was float64: keep fog's precision
        implementation.gaussian = _gaussian_without_multichannel
        implementation.sk = _PatchedModule(
            skimage, util=_PatchedModule(skimage.util, random_noise=_random_noise_from_global_rng))
    return imagecorruptions


imagecorruptions = _import_imagecorruptions()
IMAGECORRUPTIONS_VERSION = importlib.metadata.version("imagecorruptions")
