"""ImageNet-style image folders (one sub-folder per class) as ([3, H, W] float in [0, 1], label) data sets.

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

from ellbench.errors import EllbenchError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
TRANSFORMS = ("eval", "crop", "none")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
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


def resize_short_side(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio (torchvision's Resize(int) rule)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize(new_size, INTERPOLATIONS[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central size x size crop (torchvision's CenterCrop rounding); smaller images are zero-padded first."""
    width, height = image.size
    if width < size or height < size:
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, ((max(width, size) - width) // 2, (max(height, size) - height) // 2))
        image, (width, height) = padded, padded.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


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

    transform: "eval" resizes the short side to `resize` then centre-crops `img_size` (ImageNet evaluation),
    "crop" only centre-crops `img_size` (already-sized sets such as ImageNet-C), "none" keeps images as stored.
    limit keeps `limit` files evenly spread over the sorted list (deterministic, covers all classes).
    class_to_index maps folder names to labels; by default ImageNet-1k wnids get their 1k index.
    """

    def __init__(self, root, *, transform: str = "eval", img_size: int = 224, resize: int = 256,
                 interpolation: str = "bilinear", skip_bad_images: bool = False, limit: int | None = None,
                 class_to_index: Mapping[str, int] | None = None, name: str | None = None):
        if transform not in TRANSFORMS:
            raise EllbenchError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        if interpolation not in INTERPOLATIONS:
            raise EllbenchError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        self.root = Path(root)
        samples = scan_image_folder(self.root)
        mapping, self.num_classes, self.class_names = label_space(sorted({c for c, _ in samples}), class_to_index)
        samples = [samples[i] for i in _evenly_spaced(len(samples), limit)]
        kept = [s for s in samples if _is_readable(s[1])] if skip_bad_images else samples
        self.skipped = len(samples) - len(kept)
        self.files = [path for _, path in kept]
        self.labels = [mapping[cls] for cls, _ in kept]
        self.transform, self.img_size, self.resize, self.interpolation = transform, img_size, resize, interpolation
        self.image_size = None if transform == "none" else img_size
        self.name = name or self.root.name
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        settings = {"transform": self.transform, "img_size": self.img_size, "resize": self.resize,
                    "interpolation": self.interpolation}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for path, label in zip(self.files, self.labels, strict=True):
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n"
                          .encode())
        return f"folder:{self.name}:{len(self.files)}:{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        """The file at `index`, decoded and transformed, as a PIL RGB image."""
        image = read_rgb(self.files[index])
        if self.transform == "eval":
            image = resize_short_side(image, self.resize, self.interpolation)
        if self.transform in ("eval", "crop"):
            image = center_crop(image, self.img_size)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.load_image(index)), self.labels[index]
