"""ImageNet-style image folders (one sub-folder per class) as ([3, H, W] float in [0, 1], label) data sets.

Images go through an EvalTransform (ellbench.data.transforms): timm's eval transform with a model's own settings,
by default timm's defaults (resize 256, centre crop 224, bilinear).

Labels live in ImageNet-1k index space when every class folder is an ImageNet-1k wnid (the 1000 sorted wnids that
timm ships), so a 1000-way model is scored directly; any other folder falls back to sorted folder order 0..K-1.

Fingerprint: a sha256 over, for every kept file in order, its path relative to the root, its byte size, its
modification time (ns) and its label, plus the transform settings. It costs one `stat` per file; a changed, added,
removed or re-written file changes it (a copy that keeps mtimes, `cp -a` or `rsync -a`, keeps it).

Bad images: without `skip_bad_images` a file that cannot be decoded raises EllbenchError naming it when it is read
(results committed before stay stored). With `skip_bad_images` every selected file is fully decoded once, up front,
and the bad ones are excluded and counted in `skipped`; the kept list, and so indices and fingerprint, depend only
on the files, so a resumed run sees the same examples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ellbench.data.transforms import DEFAULT_TRANSFORM, EvalTransform
from ellbench.errors import EllbenchError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
# What PIL raises on unreadable, truncated or malformed image files.
IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (timm's bundled synset list)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


def imagenet_class_names() -> tuple[str, ...]:
    """Short human-readable names of the 1000 ImageNet-1k classes (first lemma of each synset)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.label_name_to_description(w).split(",")[0] for w in imagenet_wnids())


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 [3, H, W] in [0, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


def read_rgb(path: Path) -> Image.Image:
    """Decode an image file fully into RGB, or raise EllbenchError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except IMAGE_READ_ERRORS as exc:
        raise EllbenchError(
            f"cannot read image {path}: {exc} (pass --skip-bad-images to skip unreadable images)"
        ) from exc


def _is_readable(path: Path) -> bool:
    """Whether the file decodes; JPEGs decode at 1/8 scale, which still reads every byte of the file."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except IMAGE_READ_ERRORS:
        return False
    return True


def _evenly_spaced(count: int, limit: int | None) -> list[int]:
    """`limit` indices spread over range(count): the centre of each of `limit` equal slices.

    A class-sorted folder limited this way keeps examples of every class, unlike its first `limit` files.
    """
    if limit is None or limit >= count:
        return list(range(count))
    if limit <= 0:
        raise EllbenchError(f"limit must be positive, got {limit}")
    return [(2 * i + 1) * count // (2 * limit) for i in range(limit)]


def scan_image_folder(root: Path) -> list[tuple[str, Path]]:
    """(class folder name, file) pairs of an ImageNet-style folder, classes and files in sorted order."""
    if not root.is_dir():
        raise EllbenchError(f"image folder {root} does not exist or is not a folder")
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        samples.extend((class_dir.name, f) for f in files)
    if not samples:
        raise EllbenchError(f"no images found in class sub-folders of {root} (expected <root>/<class>/<image>)")
    return samples


def label_space(class_folders: list[str], class_to_index: Mapping[str, int] | None):
    """(class_to_index, num_classes, class_names) for these folder names: given, ImageNet-1k wnids, or sorted."""
    if class_to_index is not None:
        unknown = sorted(set(class_folders) - set(class_to_index))
        if unknown:
            raise EllbenchError(f"class folders not in the expected class list: {', '.join(unknown[:5])}"
                                + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        num_classes = max(class_to_index.values()) + 1
        names = [""] * num_classes
        for name, index in class_to_index.items():
            names[index] = name
        return dict(class_to_index), num_classes, names
    wnids = imagenet_wnids()
    if set(class_folders) <= set(wnids):
        return {w: i for i, w in enumerate(wnids)}, len(wnids), list(imagenet_class_names())
    ordered = sorted(set(class_folders))
    return {name: i for i, name in enumerate(ordered)}, len(ordered), ordered


class ImageFolderDataset(torch.utils.data.Dataset):
    """An ImageNet-style folder `<root>/<class>/<image>` served as ([3, H, W] float in [0, 1], label).

    transform: an EvalTransform (a model's timm eval transform; default timm's defaults, resize 256 -> crop 224
    bilinear), or None to keep images as stored.
    limit keeps `limit` files evenly spread over the sorted list (deterministic, covers all classes).
    class_to_index maps folder names to labels; by default ImageNet-1k wnids get their 1k index.
    """

    def __init__(self, root, *, transform: EvalTransform | None = DEFAULT_TRANSFORM, skip_bad_images: bool = False,
                 limit: int | None = None, class_to_index: Mapping[str, int] | None = None, name: str | None = None):
        if transform is not None and not isinstance(transform, EvalTransform):
            raise EllbenchError(f"transform must be an EvalTransform or None, got {type(transform).__name__}")
        self.root = Path(root)
        samples = scan_image_folder(self.root)
        mapping, self.num_classes, self.class_names = label_space(sorted({c for c, _ in samples}), class_to_index)
        samples = [samples[i] for i in _evenly_spaced(len(samples), limit)]
        kept = [s for s in samples if _is_readable(s[1])] if skip_bad_images else samples
        self.skipped = len(samples) - len(kept)
        self.files = [path for _, path in kept]
        self.labels = [mapping[cls] for cls, _ in kept]
        self.transform = transform
        self.image_size = None if transform is None else transform.input_size[0]
        self.name = name or self.root.name
        self.fingerprint = self._fingerprint()

    @property
    def transform_description(self) -> str:
        """The transform in one line, for job keys and reports."""
        return "as stored" if self.transform is None else self.transform.describe()

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        settings = {"transform": None if self.transform is None else self.transform.settings()}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for path, label in zip(self.files, self.labels, strict=True):
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n"
                          .encode())
        return f"folder:{self.name}:{len(self.files)}:{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_rgb(self.files[index])
        return (to_tensor(image) if self.transform is None else self.transform(image)), self.labels[index]
