"""Corrupting images with either backend, deterministically per image.

The imagecorruptions backend (the default) corrupts one NumPy image at a time; the torch backend
(ellbench.corruptions.torch_backend) corrupts a batch at once, on the images' device. Both seed each image from the
same (seed, image hash, corruption, severity), and CorruptedDataset takes either.

imagecorruptions draws from NumPy's global legacy RNG, so each image is corrupted with that RNG seeded from
(seed, sha256 of the image's content, corruption, severity) and the caller's RNG state restored afterwards. The same
image gets the same corruption whatever its position, shard or worker. Images under 32 px are upsampled to 32 px,
corrupted, then downsampled back (imagecorruptions refuses smaller ones); every path reports it (`upsampled`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ellbench.corruptions import torch_backend
from ellbench.corruptions.compat import IMAGECORRUPTIONS_VERSION, imagecorruptions
from ellbench.corruptions.names import DEFAULT_BACKEND, MIN_SIDE, check_backend, check_corruption
from ellbench.corruptions.seeds import content_hash, image_seed
from ellbench.data import dataset_batch
from ellbench.errors import EllbenchError


def _corrupt_seeded(image: np.ndarray, corruption: str, severity: int, seed_words: np.ndarray) -> np.ndarray:
    saved = np.random.get_state()
    np.random.seed(seed_words)
    try:
        return imagecorruptions.corrupt(image, severity=severity, corruption_name=corruption)
    finally:
        np.random.set_state(saved)


def corrupt_image(image: np.ndarray, corruption: str, severity: int, *, seed: int = 0,
                  image_hash: str | None = None) -> tuple[np.ndarray, bool]:
    """Corrupt a uint8 [H, W, 3] image; returns (uint8 [H, W, 3], upsampled).

    The RNG is seeded from (seed, image_hash, corruption, severity); image_hash defaults to the pixels' hash
    (generated ImageNet-C passes the source file's hash, its cache key).
    Images with a side under 32 px are upsampled (bilinear) so the short side is 32, corrupted, and brought back to
    their size with box (area) averaging; `upsampled` says so.
    """
    check_corruption(corruption, severity)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise EllbenchError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    seed_words = image_seed(seed, image_hash or content_hash(image), corruption, severity)
    height, width = image.shape[:2]
    if min(height, width) >= MIN_SIDE:
        return _corrupt_seeded(image, corruption, severity, seed_words), False
    scale = MIN_SIDE / min(height, width)
    big_size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))  # PIL (W, H)
    big = np.asarray(Image.fromarray(image).resize(big_size, Image.Resampling.BILINEAR))
    corrupted = _corrupt_seeded(big, corruption, severity, seed_words)
    return np.asarray(Image.fromarray(corrupted).resize((width, height), Image.Resampling.BOX)), True


def backend_version(backend: str) -> str:
    """What identifies a backend's pixels: imagecorruptions' package version, or the torch port's version."""
    return IMAGECORRUPTIONS_VERSION if check_backend(backend) == "imagecorruptions" \
        else torch_backend.TORCH_BACKEND_VERSION


def backend_fingerprint(backend: str) -> str:
    """The part of a corrupted data set's fingerprint that names the backend.

    imagecorruptions keeps the form fingerprints had before the torch backend ("ic=1.1.2"), so stored jobs stay
    valid; the torch backend adds its own version (it also reads imagecorruptions' frost pictures).
    """
    suffix = "" if check_backend(backend) == "imagecorruptions" else f":backend={backend_version(backend)}"
    return f"ic={IMAGECORRUPTIONS_VERSION}{suffix}"


def backend_settings(backend: str) -> dict:
    """What a corruption job's settings add for its backend: nothing for imagecorruptions (as keys had it before),
    the backend and its version for torch, so that the two backends are different jobs."""
    if check_backend(backend) == "imagecorruptions":
        return {}
    return {"corruption_backend": backend, "corruption_backend_version": backend_version(backend)}


def corrupt_tensor(images: torch.Tensor, corruption: str, severity: int, *, seed: int = 0,
                   backend: str = DEFAULT_BACKEND) -> tuple[torch.Tensor, bool]:
    """Corrupt float [B, 3, H, W] images in [0, 1] (quantised to 8 bits first); returns (images, upsampled).

    imagecorruptions runs on the CPU and the result is moved back to the images' device; the torch backend runs on
    the images' device.
    """
    if check_backend(backend) == "torch":
        return torch_backend.corrupt_tensor(images, corruption, severity, seed=seed)
    corrupted, upsampled = _corrupt_pixels(_to_pixels(images), corruption, severity, seed)
    out = torch.from_numpy(corrupted).permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W]
    return out.to(images.device), upsampled


def _to_pixels(images: torch.Tensor) -> np.ndarray:
    """Float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3], as imagecorruptions takes them."""
    return (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _corrupt_pixels(pixels: np.ndarray, corruption: str, severity: int, seed: int) -> tuple[np.ndarray, bool]:
    """imagecorruptions over a uint8 [B, H, W, 3] batch, image by image (also a worker task of precompute_all)."""
    results = [corrupt_image(np.ascontiguousarray(p), corruption, severity, seed=seed) for p in pixels]
    return np.stack([r[0] for r in results]), any(r[1] for r in results)


class CorruptedDataset(torch.utils.data.Dataset):
    """Any data set of ([3, H, W] in [0, 1], label) with one corruption applied to each image.

    Lazily, per batch; or with precompute=True all at once when built (kept as uint8), so that several models
    evaluated on the same entry pay for the corruption once.
    """

    def __init__(self, base, corruption: str, severity: int, *, seed: int = 0, precompute: bool = False,
                 chunk_size: int = 256, backend: str = DEFAULT_BACKEND):
        check_corruption(corruption, severity)
        self.base, self.corruption, self.severity, self.seed = base, corruption, severity, seed
        self.backend = check_backend(backend)
        self.name = f"{base.name}/{corruption}/{severity}"
        self.fingerprint = (f"{base.fingerprint}|corrupt:{corruption}:{severity}:seed={seed}:"
                            f"{backend_fingerprint(backend)}")
        self.num_classes, self.image_size, self.class_names = base.num_classes, base.image_size, base.class_names
        self.upsampled = base.image_size is not None and base.image_size < MIN_SIDE
        self.precomputed, self.chunk_size = None, chunk_size
        if precompute:
            self._precompute_here()

    def _precompute_here(self) -> None:
        chunks = [self._corrupt(indices) for indices in self._chunks()]
        self.precomputed = (torch.cat([(images * 255).round().to(torch.uint8) for images, _ in chunks]),
                            torch.cat([labels for _, labels in chunks]))

    def _chunks(self) -> list[torch.Tensor]:
        return [torch.arange(start, min(start + self.chunk_size, len(self.base)))
                for start in range(0, len(self.base), self.chunk_size)]

    def _corrupt(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = dataset_batch(self.base, indices)
        return corrupt_tensor(images, self.corruption, self.severity, seed=self.seed, backend=self.backend)[0], labels

    @property
    def in_memory(self) -> bool:
        """Precomputed images are a slice of a tensor; lazily corrupted ones cost CPU time worth worker processes."""
        return self.precomputed is not None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        images, labels = self.get_batch(torch.tensor([index]))
        return images[0], int(labels[0])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] float in [0, 1] and labels [B]."""
        if self.precomputed is None:
            return self._corrupt(indices)
        images, labels = self.precomputed
        return images[indices].float().div_(255.0), labels[indices]


# A process pool pays for its start (each worker is a fresh interpreter importing torch, a few seconds) only on
# thousands of images; below this many, precompute_all corrupts them in this process.
POOL_MIN_IMAGES = 4096


def _one_torch_thread() -> None:
    """Pool initializer: the worker processes are the parallelism, so each keeps one torch thread (also used by
    imagenet_c's generation pool)."""
    torch.set_num_threads(1)


def precompute_all(datasets: list[CorruptedDataset], *, workers: int | None = None) -> None:
    """Precompute lazily built CorruptedDatasets (precompute=False) together, as precompute=True would, image for
    image: imagecorruptions entries over `workers` processes (None: every core when there are at least
    POOL_MIN_IMAGES images to corrupt, else this process; 0 or 1: this process). The pixels do not depend on the
    worker count: each image's RNG is seeded from its own content. torch-backend entries run here, batched.

    The workers are spawned, not forked: a fork of a process whose torch threads have run can hang.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending = [d for d in datasets if d.precomputed is None]
    pooled = [d for d in pending if d.backend == "imagecorruptions"]
    if workers is None:
        workers = (os.cpu_count() or 1) if sum(len(d) for d in pooled) >= POOL_MIN_IMAGES else 1
    if max(1, workers) == 1:
        pooled = []
    for dataset in pending:
        if dataset not in pooled:
            dataset._precompute_here()
    if not pooled:
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_torch_thread) as pool:
        current = pooled[0]
        try:
            jobs = []
            for current in pooled:
                chunks = [dataset_batch(current.base, indices) for indices in current._chunks()]
                jobs.append((current, [(pool.submit(_corrupt_pixels, _to_pixels(images), current.corruption,
                                                    current.severity, current.seed), labels)
                                       for images, labels in chunks]))
            for current, chunks in jobs:
                pixels = [torch.from_numpy(future.result()[0]).permute(0, 3, 1, 2) for future, _ in chunks]
                current.precomputed = (torch.cat(pixels).contiguous(), torch.cat([labels for _, labels in chunks]))
        except BaseException as error:
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(error, BrokenProcessPool):
                raise EllbenchError(f"a worker process died while corrupting {current.name}: {error}") from None
            if isinstance(error, Exception) and not isinstance(error, EllbenchError):
                first = (str(error).strip().splitlines() or [""])[0]
                raise EllbenchError(f"corrupting {current.name} failed: {type(error).__name__}: {first}") from None
            raise
