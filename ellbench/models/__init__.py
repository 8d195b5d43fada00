"""Model families of ellbench, registered with timm on import.

Naming scheme (the family is the first word of the name):
  deit_*        DeiT (timm's own deit_{tiny,small,base}_patch16_224, plus ellbench's small-image deit_micro_*)
  elliptical_*  Elliptical Attention (Nielsen et al., NeurIPS 2024)
  rvt_*         Robust Vision Transformer (Mao et al., CVPR 2022)
  kde_*, rkde_*, mom_*  DeiT with KDE, robust-KDE and median-of-means attention (Han et al.)
"""

from ellbench.models import elliptical, kde, rvt, vit  # noqa: F401  (registration side effects)
