"""Model families of ellbench, registered with timm when timm is imported.

Naming scheme (the family is the first word of the name):
  deit_*        DeiT (timm's own deit_{tiny,small,base}_patch16_224, plus ellbench's small-image deit_micro_*)
  elliptical_*  Elliptical Attention (Nielsen et al., NeurIPS 2024)
  rvt_*         Robust Vision Transformer (Mao et al., CVPR 2022)
  kde_*, rkde_*, mom_*  DeiT with KDE, robust-KDE and median-of-means attention (Han et al.)

Importing the package alone stays light (the CLI reads checkpoints' sidecars through ellbench.models.loading before
any heavy import): the families register when timm is (or already was) imported, through ellbench's import hook
(ellbench/__init__.py), which imports them with register_families.
"""

import sys


def register_families() -> None:
    """Import the model families: their @register_model decorators fill timm's registry."""
    from ellbench.models import elliptical, kde, rvt, vit  # noqa: F401  (registration side effects)


if "timm" in sys.modules:
    register_families()
