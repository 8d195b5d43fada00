"""ImageNet-A and ImageNet-R: 200-class subsets of ImageNet-1k scored on the 200 matching logits.

Both sets are folders `<root>/<wnid>/*` over (a subset of) 200 wnids. Labels are the position of the wnid in the
shipped sorted 200-wnid list, which is also torchvision ImageFolder's order; the model's 1000 logits are cut down
to those 200 classes (index_select with the shipped 1k indices, which ascend with the wnids) before argmax, as
Hendrycks' evaluation scripts do. The lists ship in this package (imagenet_{a,r}_{wnids,indices_1k}.txt) and agree
with timm's imagenet_{a,r}_synsets.txt / _indices.txt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ellbench.data.folders import ImageFolderDataset
from ellbench.data.transforms import DEFAULT_TRANSFORM, EvalTransform
from ellbench.errors import EllbenchError

SHIFT_SETS = ("imagenet-a", "imagenet-r")
_DATA_DIR = Path(__file__).resolve().parent


def check_shift_set(name: str) -> str:
    """`name` when it is imagenet-a or imagenet-r; a one-line error otherwise."""
    if name not in SHIFT_SETS:
        raise EllbenchError(f"unknown shift data set {name!r}; choose one of {', '.join(SHIFT_SETS)}")
    return name


def _read_list(name: str, kind: str) -> list[str]:
    return (_DATA_DIR / f"{check_shift_set(name).replace('-', '_')}_{kind}.txt").read_text().split()


def subset_wnids(name: str) -> tuple[str, ...]:
    """The 200 wnids of 'imagenet-a' or 'imagenet-r', sorted (label j of the subset is wnid j)."""
    return tuple(_read_list(name, "wnids"))


def subset_indices_1k(name: str) -> tuple[int, ...]:
    """ImageNet-1k logit index of each of the subset's 200 classes, in subset-label order."""
    return tuple(int(i) for i in _read_list(name, "indices_1k"))


def restrict_logits(logits: torch.Tensor, name: str) -> torch.Tensor:
    """[B, 1000] ImageNet-1k logits -> [B, 200] logits of the subset's classes, column j = subset label j."""
    if logits.shape[-1] != 1000:
        raise EllbenchError(f"{name} needs a model with 1000 ImageNet-1k outputs, got {logits.shape[-1]}")
    index = torch.tensor(subset_indices_1k(name), device=logits.device)
    return logits.index_select(-1, index)  # [B, 200]


def open_shift_dataset(name: str, root, *, transform: EvalTransform = DEFAULT_TRANSFORM, skip_bad_images: bool = False,
                       limit: int | None = None) -> ImageFolderDataset:
    """An ImageNet-A or -R folder `<root>/<wnid>/*` with labels 0..199 in the subset's class space, read through
    `transform` (the evaluated model's own eval transform)."""
    wnids = subset_wnids(name)
    return ImageFolderDataset(root, transform=transform, skip_bad_images=skip_bad_images, limit=limit,
                              class_to_index={w: i for i, w in enumerate(wnids)}, name=name)
