"""ImageNet-C images: released folders on disk, or generated from a clean ImageNet-style folder and cached.

Generated images are made the way Hendrycks made ImageNet-C (resize, centre crop, corrupt, JPEG quality 85), with the
resize and crop of the evaluated model's own eval transform (Hendrycks' 256 -> 224 bilinear is timm's default one),
in worker processes, and cached on disk by the sha256 of the clean file and the transform, so a second run only
decodes. Either backend makes the pixels (ellbench.corruptions.names.BACKENDS); the recipe around them is the same,
and the backend is part of the cache key. Released ImageNet-C files are 224 px: see released_imagenet_c_transform
for a model of another size.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ellbench.corruptions import torch_backend
from ellbench.corruptions.compat import IMAGECORRUPTIONS_VERSION
from ellbench.corruptions.images import _one_torch_thread, backend_fingerprint, content_hash, corrupt_image
from ellbench.corruptions.names import (
    ALL_CORRUPTIONS,
    CORRUPTION_GROUPS,
    DEFAULT_BACKEND,
    MIN_SIDE,
    check_backend,
    check_corruption,
)
from ellbench.data.folders import ImageFolderDataset, read_rgb, to_tensor
from ellbench.data.transforms import DEFAULT_TRANSFORM, EvalTransform, released_imagenet_c_transform
from ellbench.errors import EllbenchError
from ellbench.io import atomic_path


def find_imagenet_c_folder(root, corruption: str, severity: int) -> Path:
    """`<root>/<corruption>/<severity>` or `<root>/<group>/<corruption>/<severity>` (the per-group tar layout)."""
    check_corruption(corruption, severity)
    root = Path(root)
    if not root.is_dir():
        raise EllbenchError(f"ImageNet-C folder {root} does not exist")
    flat, grouped = root / corruption / str(severity), root / CORRUPTION_GROUPS[corruption] / corruption / str(severity)
    for candidate in (flat, grouped):
        if candidate.is_dir():
            return candidate
    present = sorted(p.name for p in [*root.iterdir(), *root.glob("*/*")] if p.name in ALL_CORRUPTIONS)
    raise EllbenchError(f"no {corruption}/{severity} under ImageNet-C folder {root}; "
                        f"corruptions found: {', '.join(present) or 'none'}")


def imagenet_c_folder(root, corruption: str, severity: int, *, model_transform: EvalTransform | None = None,
                      skip_bad_images: bool = False, limit: int | None = None) -> ImageFolderDataset:
    """One (corruption, severity) of released ImageNet-C, read for a model with eval transform `model_transform`.

    The files are already resized and cropped to 224 px: a 224 px model gets their pixels as they are (Hendrycks'
    evaluation only centre-crops 224); a model of another input size gets them resized to it, and the data set's
    `resized` says so (released_imagenet_c_transform).
    """
    folder = find_imagenet_c_folder(root, corruption, severity)
    transform = released_imagenet_c_transform(model_transform)
    dataset = ImageFolderDataset(folder, transform=transform, skip_bad_images=skip_bad_images, limit=limit,
                                 name=f"imagenet-c/{corruption}/{severity}")
    dataset.resized = None if transform.input_size == RELEASED_SIZE else \
        f"released 224 px images resized to {transform.input_size[0]}x{transform.input_size[1]} " \
        f"({transform.interpolation}) for this model"
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-C generated from a clean folder, in worker processes, cached on disk


GENERATOR_VERSION = 2  # bump when generation changes, so stale cached images are not reused (2: timm's transform)
RELEASED_SIZE = (224, 224)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ellbench/imagenet-c (default ~/.cache/ellbench/imagenet-c)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ellbench" / "imagenet-c"


@dataclass(frozen=True)
class GenerationSettings:
    """How clean images become ImageNet-C images; every field is part of the cache key."""

    corruption: str
    severity: int
    seed: int = 0
    transform: EvalTransform = DEFAULT_TRANSFORM  # resize and crop before corrupting: the model's eval transform
    jpeg_quality: int | None = 85  # ImageNet-C was saved as JPEG quality 85; None keeps the exact pixels (PNG)
    backend: str = DEFAULT_BACKEND  # who computes the corrupted pixels (names.BACKENDS)

    def cache_path(self, cache_dir: Path, image_hash: str) -> Path:
        suffix = f"q{self.jpeg_quality}.JPEG" if self.jpeg_quality else "png"
        backend = "" if self.backend == "imagecorruptions" else f"-{torch_backend.TORCH_BACKEND_VERSION}"
        variant = f"seed{self.seed}-{self.transform.slug()}-ic{IMAGECORRUPTIONS_VERSION}{backend}-v{GENERATOR_VERSION}"
        return cache_dir / self.corruption / str(self.severity) / variant / image_hash[:2] / f"{image_hash}.{suffix}"


def make_imagenet_c_image(source: Path, settings: GenerationSettings) -> tuple[bytes, bool]:
    """Encoded ImageNet-C version of one clean file (resize and crop by timm's transform, corrupt, encode), and
    whether it was upsampled."""
    raw = source.read_bytes()
    image = np.ascontiguousarray(settings.transform.pixels(read_rgb(source)))  # uint8 [H, W, 3]
    if settings.backend == "torch":  # the same per-image seed, from the source file's hash
        images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)  # [1, 3, H, W]
        out, upsampled = torch_backend.corrupt_tensor(images, settings.corruption, settings.severity,
                                                      seed=settings.seed, image_hashes=[content_hash(raw)])
        corrupted = torch_backend.to_uint8_hwc(out)[0]
    else:
        corrupted, upsampled = corrupt_image(image, settings.corruption, settings.severity,
                                             seed=settings.seed, image_hash=content_hash(raw))
    buffer = io.BytesIO()
    if settings.jpeg_quality:
        Image.fromarray(corrupted).save(buffer, format="JPEG", quality=settings.jpeg_quality, optimize=True)
    else:
        Image.fromarray(corrupted).save(buffer, format="PNG")
    return buffer.getvalue(), upsampled


def _generate_into_cache(source: str, target: str, settings: GenerationSettings) -> bool:
    """Worker task: write one generated image to its cache path atomically; returns whether it was upsampled."""
    encoded, upsampled = make_imagenet_c_image(Path(source), settings)
    with atomic_path(target) as partial:  # readers never see a half-written file
        partial.write_bytes(encoded)
    return upsampled


def _worker_context():
    # fork starts workers instantly with everything imported; elsewhere fall back to spawn.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def file_hashes(paths: Iterable[Path]) -> list[str]:
    """sha256 of each file's bytes: the cache key of its generated versions (compute once per suite run)."""
    return [content_hash(_read_source(p)) for p in paths]


def generate_cached(sources: Iterable[Path], settings: GenerationSettings, cache_dir, *, workers: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    source_hashes: list[str] | None = None) -> list[Path]:
    """Cache paths of the ImageNet-C versions of `sources`, generating the missing ones over `workers` processes.

    progress(done, total) is called after each generated image. workers=None uses every CPU core; 1 runs here.
    source_hashes (from file_hashes) saves re-reading every source when several entries share them.
    """
    check_corruption(settings.corruption, settings.severity)
    cache_dir = Path(cache_dir)
    sources = list(sources)
    hashes = source_hashes if source_hashes is not None else file_hashes(sources)
    if len(hashes) != len(sources):
        raise EllbenchError(f"got {len(hashes)} source hashes for {len(sources)} source images")
    targets = [settings.cache_path(cache_dir, h) for h in hashes]
    # One task per missing cache file (files with identical content share one), in a fixed order.
    missing = sorted({str(t): str(s) for s, t in zip(sources, targets, strict=True) if not t.is_file()}.items())
    workers = max(1, min(workers or os.cpu_count() or 1, len(missing) or 1))
    if workers == 1:
        for done, (target, source) in enumerate(missing, 1):
            with _naming_the_image(source, settings):
                _generate_into_cache(source, target, settings)
            if progress:
                progress(done, len(missing))
        return targets
    with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(), initializer=_one_torch_thread) as pool:
        futures = {pool.submit(_generate_into_cache, source, target, settings): source for target, source in missing}
        try:
            for done, future in enumerate(as_completed(futures), 1):
                with _naming_the_image(futures[future], settings):
                    future.result()  # re-raises a worker's error here
                if progress:
                    progress(done, len(missing))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # stop at the first failure; finished files stay cached
            raise
    return targets


@contextlib.contextmanager
def _naming_the_image(source: str, settings: GenerationSettings):
    """A failure while generating one image becomes one line naming the image and the corruption (a worker's own
    error arrives with its remote traceback attached; an EllbenchError, e.g. an unreadable image, already names it)."""
    try:
        yield
    except EllbenchError:
        raise
    except BrokenProcessPool as error:
        raise EllbenchError(f"a worker process died while generating {settings.corruption} severity "
                            f"{settings.severity} (from {source} or another image): {error}; lower --workers (each "
                            "worker holds images in memory) and run again, finished images stay cached") from None
    except Exception as error:  # noqa: BLE001  (any failure of the corruption code: one line, not a remote traceback)
        first = (str(error).strip().splitlines() or [""])[0]
        raise EllbenchError(f"generating {settings.corruption} severity {settings.severity} from {source} failed: "
                            f"{type(error).__name__}: {first}") from None


def _read_source(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EllbenchError(f"cannot read image {path}: {exc}") from exc


def _generate_once_per_job(sources: list[Path], settings: GenerationSettings, cache_dir: Path, **options) -> list[Path]:
    """generate_cached on rank 0 while other torch.distributed ranks wait, then every rank finds the files cached.

    (A rank with its own cache folder still generates what it lacks. If rank 0 fails, torchrun ends the others.)
    """
    from ellbench import distributed

    if distributed.is_writer():
        files = generate_cached(sources, settings, cache_dir, **options)
    distributed.barrier()
    if not distributed.is_writer():
        files = generate_cached(sources, settings, cache_dir, **options)
    return files


class GeneratedImageNetC(torch.utils.data.Dataset):
    """ImageNet-C made from a clean ImageNet-style folder, as Hendrycks made it, generated once and cached on disk.

    `clean` is a folder path or an ImageFolderDataset (whose files, labels, limit and skipped files are then used).
    `transform` resizes and crops before the corruption: by default the clean data set's own (the evaluated model's
    eval transform), else timm's default (Hendrycks' 256 -> 224).
    `backend` computes the corrupted pixels (imagecorruptions, or torch in the worker processes on the CPU); the
    resize, crop and JPEG encoding around it are the same for both.
    All images are generated, or found in the cache, when the data set is built, so reading it only decodes cached
    files. Cache layout: <cache_dir>/<corruption>/<severity>/seed<seed>-<transform>-ic<version>[-torch-<n>]-v<gen>/
    <sha[:2]>/<sha>.q85.JPEG, where sha is the sha256 of the clean file's bytes. `upsampled` is True when a side
    under 32 px forced the upsample-corrupt-downsample path.
    """

    def __init__(self, clean, corruption: str, severity: int, *, seed: int = 0, cache_dir=None,
                 workers: int | None = None, transform: EvalTransform | None = None, jpeg_quality: int | None = 85,
                 skip_bad_images: bool = False, limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None, source_hashes: list[str] | None = None,
                 backend: str = DEFAULT_BACKEND):
        check_corruption(corruption, severity)
        if transform is None:
            transform = getattr(clean, "transform", None) or DEFAULT_TRANSFORM
        self.backend = check_backend(backend)
        self.settings = GenerationSettings(corruption, severity, seed, transform, jpeg_quality, backend)
        self.clean = clean if isinstance(clean, ImageFolderDataset) else ImageFolderDataset(
            clean, transform=None, skip_bad_images=skip_bad_images, limit=limit)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.files = _generate_once_per_job(self.clean.files, self.settings, self.cache_dir, workers=workers,
                                            progress=progress, source_hashes=source_hashes)
        self.labels = self.clean.labels
        self.transform = transform
        self.skipped, self.upsampled = self.clean.skipped, min(transform.input_size) < MIN_SIDE
        self.num_classes, self.class_names = self.clean.num_classes, self.clean.class_names
        self.image_size = transform.input_size[0]
        self.name = f"{self.clean.name}/generated-c/{corruption}/{severity}"
        self.fingerprint = (f"{self.clean.fingerprint}|generated-c:{corruption}:{severity}:seed={seed}:"
                            f"{transform.slug()}:q={jpeg_quality}:{backend_fingerprint(backend)}:v{GENERATOR_VERSION}")

    @property
    def transform_description(self) -> str:
        """The resize and crop made before corrupting, for job keys and reports."""
        return self.transform.describe()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(read_rgb(self.files[index])), self.labels[index]
