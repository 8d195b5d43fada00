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
from ellbench.errors import EllbenchError

SHIFT_SETS = ("imagenet-a", "imagenet-r")
_DATA_DIR = Path(__file__).resolve().parent


def _check(name: str) -> str:
    if name not in SHIFT_SETS:
        raise EllbenchError(f"unknown shift data set {name!r}; choose one of {', '.join(SHIFT_SETS)}")
    return name


def _read_list(name: str, kind: str) -> list[str]:
    return (_DATA_DIR / f"{_check(name).replace('-', '_')}_{kind}.txt").read_text().split()


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


def labels_to_subset(labels_1k: torch.Tensor, name: str) -> torch.Tensor:
    """ImageNet-1k labels -> subset labels 0..199; classes outside the subset raise EllbenchError."""
    lookup = torch.full((1000,), -1, dtype=torch.long)
    lookup[list(subset_indices_1k(name))] = torch.arange(200)
    mapped = lookup[labels_1k.long().cpu()]
    if (mapped < 0).any():
        outside = sorted(set(labels_1k[mapped < 0].tolist()))
        raise EllbenchError(f"ImageNet-1k classes {outside[:5]} are not among the 200 classes of {name}")
    return mapped.to(labels_1k.device)


def open_shift_dataset(name: str, root, *, img_size: int = 224, resize: int = 256, interpolation: str = "bilinear",
                       skip_bad_images: bool = False, limit: int | None = None) -> ImageFolderDataset:
    """An ImageNet-A or -R folder `<root>/<wnid>/*` with labels 0..199 in the subset's class space."""
    wnids = subset_wnids(name)
    return ImageFolderDataset(root, transform="eval", img_size=img_size, resize=resize, interpolation=interpolation,
                              skip_bad_images=skip_bad_images, limit=limit,
                              class_to_index={w: i for i, w in enumerate(wnids)}, name=name)


def shift_evaluator(model, name: str, device: str = "cpu"):
    """evaluate_batch for ImageNet-A/R: logits restricted to the subset's 200 classes, then argmax."""
    _check(name)

    @torch.no_grad()
    def evaluate_batch(indices, images, labels):
        logits = restrict_logits(model(images.to(device)).float(), name).cpu()
        preds = logits.argmax(1)
        return [
            {"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y)}
            for i, y, p in zip(indices.tolist(), labels.tolist(), preds.tolist(), strict=True)
        ]

    return evaluate_batch


def run_shift(store, loaded, name: str, root, *, batch_size: int = 64, seed: int = 0, skip_bad_images: bool = False,
              limit: int | None = None, img_size: int = 224, resize: int = 256, progress: bool = True) -> dict:
    """Top-1 accuracy of one model on an ImageNet-A/R folder, as a resumable job; returns the stored job row.

    `loaded` is an ellbench.evaluate.LoadedModel; the number of unreadable files skipped goes into provenance.
    """
    from ellbench.runner import job_key, run_job

    dataset = open_shift_dataset(name, root, img_size=img_size, resize=resize, skip_bad_images=skip_bad_images,
                                 limit=limit)
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task=name,
                  settings={"batch_size": batch_size, "logits": "restricted to the 200 subset classes"}, seed=seed)
    return run_job(store, key, dataset, shift_evaluator(loaded.module, name, loaded.device), batch_size=batch_size,
                   description=f"{name} {loaded.name}", progress=progress, device=loaded.device,
                   provenance_extra={"skipped_images": dataset.skipped})
