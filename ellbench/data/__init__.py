"""Data sets as torch Datasets of ([3, H, W] float images in [0, 1], label), with a stable fingerprint."""

from __future__ import annotations

from pathlib import Path

from ellbench.errors import EllbenchError

BUILTIN_DATASETS = ("digits", "fashion-mnist")
SPLITS = ("train", "test")


def is_builtin(spec: str) -> bool:
    """Whether `spec` names a built-in set rather than a folder."""
    return spec in BUILTIN_DATASETS


def check_folder(spec: str) -> Path:
    """The folder `spec` names, or a one-line error when it is neither a built-in set nor an existing folder."""
    path = Path(spec)
    if not path.exists():
        raise EllbenchError(
            f"data {spec!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) nor an existing folder"
        )
    if not path.is_dir():
        raise EllbenchError(f"data path {spec} is not a folder (expected one sub-folder of images per class)")
    return path


def open_dataset(spec: str, split: str = "test", *, root: str | Path | None = None, limit: int | None = None,
                 skip_bad_images: bool = False, transform=None):
    """A built-in set by name ('digits', 'fashion-mnist') or an ImageNet-style folder (one sub-folder per class).

    `transform` (an ellbench.data.transforms.EvalTransform, e.g. a model's own) applies to folders; None gives timm's
    default eval transform. Built-in sets are always served as stored.
    """
    if split not in SPLITS:
        raise EllbenchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and limit <= 0:
        raise EllbenchError(f"--limit must be positive, got {limit}")
    if spec in BUILTIN_DATASETS:
        from ellbench.data import builtin

        dataset = builtin.load_digits(split) if spec == "digits" else builtin.load_fashion_mnist(split, root)
        return dataset.subset(limit)
    path = check_folder(spec)
    from ellbench.data.folders import ImageFolderDataset
    from ellbench.data.transforms import DEFAULT_TRANSFORM

    return ImageFolderDataset(path, limit=limit, skip_bad_images=skip_bad_images,
                              transform=transform if transform is not None else DEFAULT_TRANSFORM)


def dataset_batch(dataset, indices):
    """Images [B, 3, H, W] and labels [B] for a list of indices, using the data set's fast path when it has one."""
    import torch

    index_tensor = torch.as_tensor(indices, dtype=torch.long)
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(index_tensor)
    items = [dataset[int(i)] for i in index_tensor]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.long)
