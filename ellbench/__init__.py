"""ellbench: robustness and efficiency benchmarks for Elliptical Attention and the models it is compared with.

Importing ellbench registers its models with timm (``timm.create_model('elliptical_tiny_patch16_224')``).
The registration happens as soon as timm is imported too, so ``import ellbench`` stays cheap for the CLI:
if timm is already imported, the models register now; otherwise they register right after ``import timm``.
"""

import importlib.abc
import importlib.machinery
import sys

from ellbench._version import __version__ as __version__


def _register_models() -> None:
    from ellbench.models import register_families

    register_families()


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Import hook: once `timm` has executed, import ellbench.models so its registrations exist."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_then_register(module):
            original_exec(module)
            _register_models()

        loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _RegisterAfterTimm())
