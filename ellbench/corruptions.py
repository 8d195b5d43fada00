"""ImageNet-C: imagecorruptions made to run on today's stack, ImageNet-C from disk or generated with a cache, mCE.

Three ways to get corrupted images, all [3, H, W] float in [0, 1]:
  - released ImageNet-C folders: `imagenet_c_folder(root, corruption, severity)`;
  - generated from a clean ImageNet-style folder the way ImageNet-C was made (resize 256, centre crop 224, corrupt,
    JPEG quality 85), in worker processes, cached on disk: `GeneratedImageNetC(...)`;
  - in-memory data sets (the built-in 8x8 / 28x28 sets): `CorruptedDataset(base, ...)`.
Images under 32 px are upsampled to 32 px, corrupted, then downsampled back (imagecorruptions refuses smaller ones);
every path reports it through an `upsampled` flag.

Determinism: imagecorruptions draws from NumPy's global legacy RNG, so each image is corrupted with that RNG seeded
from (seed, sha256 of the image's content, corruption, severity) and the caller's RNG state restored afterwards.
The same image gets the same corruption whatever its position, shard or worker.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import math
import multiprocessing
import os
import sys
import tomllib
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skimage
import skimage.filters
import skimage.util
import torch
from PIL import Image

from ellbench.data.folders import ImageFolderDataset, center_crop, read_rgb, resize_short_side, to_tensor
from ellbench.errors import EllbenchError
from ellbench.resources import resource_path

# ---------------------------------------------------------------------------------------------------------------
# Compatibility layer for imagecorruptions 1.1.2 (ENVIRONMENT.md): it imports pkg_resources (gone from setuptools
# >= 81), uses np.float_ (removed in NumPy 2; breaks fog) and calls skimage's gaussian(..., multichannel=True)
# (removed; breaks glass_blur and gaussian_blur). It also calls skimage's random_noise, which no longer draws from
# NumPy's global RNG (impulse_noise would ignore our seed). All four are mended in the imagecorruptions module's own
# namespace; numpy, skimage and sys.modules are left as they were.


class _PatchedModule(types.ModuleType):
    """Stand-in for a module inside imagecorruptions: given attributes replaced, the rest read from the original."""

    def __init__(self, original: types.ModuleType, **replacements):
        super().__init__(original.__name__)
        self._original = original
        self.__dict__.update(replacements)

    def __getattr__(self, name: str):
        return getattr(self._original, name)


def _pkg_resources_shim() -> types.ModuleType:
    """The one pkg_resources function imagecorruptions uses: a file next to a module or inside a package."""

    def resource_filename(module_name: str, resource: str) -> str:
        origin = importlib.util.find_spec(module_name).origin  # a package's __init__.py or a module's .py
        return str(Path(origin).parent.joinpath(*Path(resource).parts))

    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = resource_filename
    return shim


def _gaussian_without_multichannel(image, *args, multichannel: bool | None = None, **kwargs):
    """skimage.filters.gaussian accepting the removed `multichannel=True` (now channel_axis=-1)."""
    if multichannel:
        kwargs.setdefault("channel_axis", -1)
    return skimage.filters.gaussian(image, *args, **kwargs)


def _random_noise_from_global_rng(image, mode="gaussian", rng=None, **kwargs):
    """skimage.util.random_noise seeded from NumPy's global RNG, as it was when imagecorruptions was written."""
    if rng is None:
        rng = int(np.random.randint(2**31 - 1))
    return skimage.util.random_noise(image, mode=mode, rng=rng, **kwargs)


def _missing_module_stand_ins() -> dict[str, types.ModuleType]:
    """Stand-ins for the modules imagecorruptions imports that this environment no longer has."""
    import scipy.ndimage

    stand_ins = {}
    if importlib.util.find_spec("pkg_resources") is None:
        stand_ins["pkg_resources"] = _pkg_resources_shim()
    if importlib.util.find_spec("scipy.ndimage.interpolation") is None:  # slated for removal in SciPy 2.0
        stand_ins["scipy.ndimage.interpolation"] = scipy.ndimage
    return {name: module for name, module in stand_ins.items() if name not in sys.modules}


def _import_imagecorruptions() -> types.ModuleType:
    """Import imagecorruptions with its breakages on today's stack mended; idempotent."""
    stand_ins = _missing_module_stand_ins()
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.interpolation.*", category=DeprecationWarning)
            import imagecorruptions
            from imagecorruptions import corruptions as implementation
    finally:
        for name in stand_ins:  # only needed while imagecorruptions' own imports ran
            del sys.modules[name]
    if not isinstance(implementation.np, _PatchedModule):
        implementation.np = _PatchedModule(np, float_=np.float64)  # np.float_ was float64: keep fog's precision
        implementation.gaussian = _gaussian_without_multichannel
        implementation.sk = _PatchedModule(
            skimage, util=_PatchedModule(skimage.util, random_noise=_random_noise_from_global_rng))
    return imagecorruptions


imagecorruptions = _import_imagecorruptions()
IMAGECORRUPTIONS_VERSION = importlib.metadata.version("imagecorruptions")

COMMON_CORRUPTIONS = tuple(imagecorruptions.get_corruption_names("common"))  # the 15 of mCE, Hendrycks' order
EXTRA_CORRUPTIONS = tuple(imagecorruptions.get_corruption_names("validation"))  # the 4 held-out ones
ALL_CORRUPTIONS = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
CORRUPTION_GROUPS = {
    **{name: group for group in ("noise", "blur", "weather", "digital")
       for name in imagecorruptions.get_corruption_names(group)},
    **dict.fromkeys(EXTRA_CORRUPTIONS, "extra"),
}
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # imagecorruptions refuses smaller images


def check_corruption(corruption: str, severity: int) -> None:
    """Raise EllbenchError for an unknown corruption name or a severity outside 1..5."""
    if corruption not in ALL_CORRUPTIONS:
        raise EllbenchError(f"unknown corruption {corruption!r}; choose from {', '.join(ALL_CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise EllbenchError(f"severity must be an integer in 1..5, got {severity!r}")


# ---------------------------------------------------------------------------------------------------------------
# Corrupting one image


def content_hash(data: bytes | np.ndarray) -> str:
    """sha256 hex of a file's bytes or of an array's shape and bytes."""
    if isinstance(data, np.ndarray):
        data = repr(data.shape).encode() + np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def image_seed(seed: int, image_hash: str, corruption: str, severity: int) -> np.ndarray:
    """256 bits for NumPy's legacy RNG from (seed, image content hash, corruption, severity)."""
    digest = hashlib.sha256(f"{seed}\0{image_hash}\0{corruption}\0{severity}".encode()).digest()
    return np.frombuffer(digest, dtype=np.uint32)


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


def corrupt_tensor(images: torch.Tensor, corruption: str, severity: int, *, seed: int = 0) -> tuple[torch.Tensor, bool]:
    """Corrupt float [B, 3, H, W] images in [0, 1] (quantised to 8 bits first); returns (images, upsampled)."""
    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    results = [corrupt_image(np.ascontiguousarray(p), corruption, severity, seed=seed) for p in pixels]
    out = torch.from_numpy(np.stack([r[0] for r in results])).permute(0, 3, 1, 2).float().div_(255.0)  # [B,3,H,W]
    return out.to(images.device), any(r[1] for r in results)


class CorruptedDataset(torch.utils.data.Dataset):
    """Any data set of ([3, H, W] in [0, 1], label) with one corruption applied to each image.

    Lazily, per batch; or with precompute=True all at once when built (kept as uint8), so that several models
    evaluated on the same entry pay for the corruption once.
    """

    def __init__(self, base, corruption: str, severity: int, *, seed: int = 0, precompute: bool = False,
                 chunk_size: int = 256):
        check_corruption(corruption, severity)
        self.base, self.corruption, self.severity, self.seed = base, corruption, severity, seed
        self.name = f"{base.name}/{corruption}/{severity}"
        self.fingerprint = (f"{base.fingerprint}|corrupt:{corruption}:{severity}:seed={seed}:"
                            f"ic={IMAGECORRUPTIONS_VERSION}")
        self.num_classes, self.image_size, self.class_names = base.num_classes, base.image_size, base.class_names
        self.upsampled = base.image_size is not None and base.image_size < MIN_SIDE
        self.precomputed = None
        if precompute:
            chunks = [self._corrupt(torch.arange(start, min(start + chunk_size, len(base))))
                      for start in range(0, len(base), chunk_size)]
            self.precomputed = (torch.cat([(images * 255).round().to(torch.uint8) for images, _ in chunks]),
                                torch.cat([labels for _, labels in chunks]))

    def _corrupt(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ellbench.data import dataset_batch

        images, labels = dataset_batch(self.base, indices)
        return corrupt_tensor(images, self.corruption, self.severity, seed=self.seed)[0], labels

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


def corruption_evaluator(model, corruption: str, severity: int, *, seed: int = 0, device: str = "cpu"):
    """evaluate_batch that corrupts clean in-memory images on the fly, then scores top-1; rows note the corruption."""
    check_corruption(corruption, severity)

    @torch.no_grad()
    def evaluate_batch(indices, images, labels):
        corrupted, upsampled = corrupt_tensor(images, corruption, severity, seed=seed)
        preds = model(corrupted.to(device)).float().argmax(1).cpu()
        return [
            {"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y), "upsampled": upsampled}
            for i, y, p in zip(indices.tolist(), labels.tolist(), preds.tolist(), strict=True)
        ]

    return evaluate_batch


# ---------------------------------------------------------------------------------------------------------------
# Released ImageNet-C on disk


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


def imagenet_c_folder(root, corruption: str, severity: int, *, skip_bad_images: bool = False,
                      limit: int | None = None) -> ImageFolderDataset:
    """One (corruption, severity) of released ImageNet-C; images are already 224 px, so only centre-cropped."""
    folder = find_imagenet_c_folder(root, corruption, severity)
    return ImageFolderDataset(folder, transform="crop", img_size=224, skip_bad_images=skip_bad_images, limit=limit,
                              name=f"imagenet-c/{corruption}/{severity}")


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-C generated from a clean folder, in worker processes, cached on disk


GENERATOR_VERSION = 1  # bump when generation changes, so stale cached images are not reused


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ellbench/imagenet-c (default ~/.cache/ellbench/imagenet-c)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ellbench" / "imagenet-c"


@dataclass(frozen=True)
class GenerationSettings:
    """How clean images become ImageNet-C images; every field is part of the cache key."""

    corruption: str
    severity: int
    seed: int = 0
    img_size: int = 224
    resize: int = 256
    jpeg_quality: int | None = 85  # ImageNet-C was saved as JPEG quality 85; None keeps the exact pixels (PNG)

    def cache_path(self, cache_dir: Path, image_hash: str) -> Path:
        suffix = f"q{self.jpeg_quality}.JPEG" if self.jpeg_quality else "png"
        variant = f"seed{self.seed}-{self.resize}-{self.img_size}-ic{IMAGECORRUPTIONS_VERSION}-v{GENERATOR_VERSION}"
        return cache_dir / self.corruption / str(self.severity) / variant / image_hash[:2] / f"{image_hash}.{suffix}"


def make_imagenet_c_image(source: Path, settings: GenerationSettings) -> tuple[bytes, bool]:
    """Encoded ImageNet-C version of one clean file (resize, centre crop, corrupt, encode), and whether upsampled."""
    raw = source.read_bytes()
    image = center_crop(resize_short_side(read_rgb(source), settings.resize), settings.img_size)
    corrupted, upsampled = corrupt_image(np.asarray(image), settings.corruption, settings.severity,
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
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    partial = target_path.with_name(f".{target_path.name}.{os.getpid()}.partial")
    partial.write_bytes(encoded)
    os.replace(partial, target_path)  # readers never see a half-written file
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
            _generate_into_cache(source, target, settings)
            if progress:
                progress(done, len(missing))
        return targets
    with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context()) as pool:
        futures = [pool.submit(_generate_into_cache, source, target, settings) for target, source in missing]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()  # re-raises a worker's EllbenchError (naming the bad file) here
                if progress:
                    progress(done, len(missing))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # stop at the first failure; finished files stay cached
            raise
    return targets


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
    All images are generated, or found in the cache, when the data set is built, so reading it only decodes cached
    files. Cache layout: <cache_dir>/<corruption>/<severity>/seed<seed>-<resize>-<img_size>-ic<version>-v<gen>/
    <sha[:2]>/<sha>.q85.JPEG, where sha is the sha256 of the clean file's bytes. `upsampled` is True when
    img_size < 32 forced the upsample-corrupt-downsample path.
    """

    def __init__(self, clean, corruption: str, severity: int, *, seed: int = 0, cache_dir=None,
                 workers: int | None = None, img_size: int = 224, resize: int = 256, jpeg_quality: int | None = 85,
                 skip_bad_images: bool = False, limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None, source_hashes: list[str] | None = None):
        check_corruption(corruption, severity)
        self.settings = GenerationSettings(corruption, severity, seed, img_size, resize, jpeg_quality)
        self.clean = clean if isinstance(clean, ImageFolderDataset) else ImageFolderDataset(
            clean, transform="none", skip_bad_images=skip_bad_images, limit=limit)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.files = _generate_once_per_job(self.clean.files, self.settings, self.cache_dir, workers=workers,
                                            progress=progress, source_hashes=source_hashes)
        self.labels = self.clean.labels
        self.skipped, self.upsampled = self.clean.skipped, img_size < MIN_SIDE
        self.num_classes, self.class_names, self.image_size = self.clean.num_classes, self.clean.class_names, img_size
        self.name = f"{self.clean.name}/generated-c/{corruption}/{severity}"
        self.fingerprint = (f"{self.clean.fingerprint}|generated-c:{corruption}:{severity}:seed={seed}:"
                            f"{resize}-{img_size}:q={jpeg_quality}:ic={IMAGECORRUPTIONS_VERSION}:v{GENERATOR_VERSION}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(read_rgb(self.files[index])), self.labels[index]


# ---------------------------------------------------------------------------------------------------------------
# Suites (corruptions/*.toml)


@dataclass(frozen=True)
class CorruptionSuite:
    """A named list of corruptions run at the same severities, and the AlexNet baseline its mCE uses."""

    name: str
    description: str
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    baseline: str = "hendrycks"
    source: str = ""

    def entries(self) -> list[tuple[str, int]]:
        """(corruption, severity) pairs, corruption-major."""
        return [(c, s) for c in self.corruptions for s in self.severities]


def load_suite(name_or_path: str) -> CorruptionSuite:
    """A shipped suite by name ('imagenet-c', 'imagenet-c-extra', 'quick') or a TOML file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.is_file():
        path = resource_path("corruptions", f"{name_or_path}.toml")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EllbenchError(f"cannot read corruption suite {path}: {exc}") from exc
    corruptions, severities = data.get("corruptions"), data.get("severities")
    if not corruptions or not severities:
        raise EllbenchError(f"corruption suite {path} needs non-empty 'corruptions' and 'severities' lists")
    for corruption in corruptions:
        for severity in severities:
            check_corruption(corruption, severity)
    baseline = data.get("baseline", "hendrycks")
    if baseline not in BASELINES:
        raise EllbenchError(f"suite {path}: unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    return CorruptionSuite(name=path.stem, description=data.get("description", ""), corruptions=tuple(corruptions),
                           severities=tuple(severities), baseline=baseline, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# mCE (Hendrycks & Dietterich, ICLR 2019, section 3):
#   CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}                   mCE = mean over the 15 common c of CE_c
#   relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)

BASELINES = ("hendrycks", "robustbench")
BASELINE_SOURCES = {
    "hendrycks": "Hendrycks & Dietterich ImageNet-C AlexNet errors (50k val); clean error 0.4348 (their App. C)",
    "robustbench": "RobustBench's AlexNet re-run on its fixed 5k ImageNet subset (torchvision weights)",
}


@dataclass(frozen=True)
class AlexNetBaseline:
    """AlexNet top-1 errors that CE and mCE are relative to."""

    name: str
    mean_error: dict[str, float]  # corruption -> error averaged over severities 1..5
    severity_error: dict[tuple[str, int], float] = field(default_factory=dict)  # where published
    clean_error: float = math.nan

    def record(self) -> dict:
        """What a result stores so the baseline it was computed against is known."""
        return {"name": self.name, "source": BASELINE_SOURCES[self.name], "clean_error": self.clean_error,
                "file": "corruptions/alexnet_errors.csv"}

    def error(self, corruption: str, severities: Iterable[int]) -> float:
        """AlexNet's error on `corruption` averaged over `severities`."""
        severities = sorted(set(severities))
        if corruption not in self.mean_error:
            raise EllbenchError(f"the {self.name} AlexNet baseline has no error for {corruption}")
        if severities == list(SEVERITIES):
            return self.mean_error[corruption]
        missing = [s for s in severities if (corruption, s) not in self.severity_error]
        if missing:
            raise EllbenchError(f"the {self.name} AlexNet baseline has no per-severity errors for {corruption}; "
                                f"its CE needs all 5 severities")
        return sum(self.severity_error[corruption, s] for s in severities) / len(severities)


def alexnet_baseline(name: str = "hendrycks") -> AlexNetBaseline:
    """The AlexNet errors shipped in corruptions/alexnet_errors.csv, by baseline name."""
    if name not in BASELINES:
        raise EllbenchError(f"unknown AlexNet baseline {name!r}; choose one of {', '.join(BASELINES)}")
    with open(resource_path("corruptions", "alexnet_errors.csv"), newline="") as handle:
        rows = {row["corruption"]: row for row in csv.DictReader(handle)}
    clean = rows.pop("clean")
    mean_column = "hendrycks_alexnet_mean_err" if name == "hendrycks" else "robustbench_alexnet_mean_err"
    mean_error = {c: float(r[mean_column]) for c, r in rows.items() if r[mean_column]}
    severity_error = {}
    for corruption, row in rows.items():
        for s in SEVERITIES:
            if name == "hendrycks" and row[f"hendrycks_err_s{s}"]:
                severity_error[corruption, s] = float(row[f"hendrycks_err_s{s}"])
            elif name == "robustbench" and row[f"robustbench_alexnet_acc_s{s}"]:
                severity_error[corruption, s] = 1.0 - float(row[f"robustbench_alexnet_acc_s{s}"])
    return AlexNetBaseline(name, mean_error, severity_error, float(clean[mean_column]))


def _by_corruption(errors: Mapping[tuple[str, int], float]) -> dict[str, dict[int, float]]:
    grouped: dict[str, dict[int, float]] = {}
    for (corruption, severity), error in errors.items():
        check_corruption(corruption, severity)
        grouped.setdefault(corruption, {})[severity] = float(error)
    return grouped


def corruption_errors(errors: Mapping[tuple[str, int], float], baseline: AlexNetBaseline) -> dict[str, float]:
    """CE per corruption from top-1 error rates keyed by (corruption, severity), over the severities given."""
    return {c: (sum(by_s.values()) / len(by_s)) / baseline.error(c, by_s) for c, by_s in _by_corruption(errors).items()}


def relative_corruption_errors(errors: Mapping[tuple[str, int], float], clean_error: float,
                               baseline: AlexNetBaseline) -> dict[str, float]:
    """Relative CE per corruption: degradation from clean error, relative to AlexNet's degradation."""
    return {
        c: (sum(by_s.values()) / len(by_s) - clean_error) / (baseline.error(c, by_s) - baseline.clean_error)
        for c, by_s in _by_corruption(errors).items()
    }


def summarize_corruptions(errors: Mapping[tuple[str, int], float], *, clean_error: float | None = None,
                          baseline: str = "hendrycks") -> dict:
    """CE, mCE and (with a clean error) relative CE and relative mCE, with the baseline recorded.

    `errors` maps (corruption, severity) to top-1 error. mCE averages the common corruptions present;
    `mce_complete` is True only when all 15 were measured at all 5 severities (the number papers report).
    The extra corruptions, when present, get their own `extra_mce` (their AlexNet errors are secondary).
    Corruptions the baseline cannot score at the measured severities are listed in `ce_unavailable` with the
    reason. CE and mCE are fractions (AlexNet = 1); papers print them x 100.
    """
    reference = alexnet_baseline(baseline)
    grouped = _by_corruption(errors)
    scorable, unavailable = {}, {}
    for corruption, by_severity in grouped.items():
        try:
            reference.error(corruption, by_severity)
        except EllbenchError as exc:
            unavailable[corruption] = str(exc)
            continue
        scorable.update({(corruption, s): e for s, e in by_severity.items()})
    ce = corruption_errors(scorable, reference)
    common = [c for c in COMMON_CORRUPTIONS if c in ce]
    extra = [c for c in EXTRA_CORRUPTIONS if c in ce]
    summary = {
        "baseline": reference.record(),
        "ce": ce,
        "ce_unavailable": unavailable,
        "mce": _mean(ce[c] for c in common),
        "mce_corruptions": common,
        "mce_complete": common == list(COMMON_CORRUPTIONS)
        and all(sorted(grouped[c]) == list(SEVERITIES) for c in common),
        "mean_error": _mean(errors.values()),  # the unnormalised mean error: NOT mCE
    }
    if extra:
        summary.update(extra_mce=_mean(ce[c] for c in extra), extra_corruptions=extra,
                       extra_mce_note="AlexNet errors of the 4 extra corruptions come from third-party code "
                                      "(secondary source)")
    if clean_error is not None:
        relative = relative_corruption_errors(scorable, clean_error, reference)
        summary.update(clean_error=clean_error, relative_ce=relative, relative_mce=_mean(relative[c] for c in common))
        if extra:
            summary["extra_relative_mce"] = _mean(relative[c] for c in extra)
    return summary


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------------------
# Running a suite on one model


def corrupted_dataset(corruption: str, severity: int, *, clean=None, imagenet_c=None, seed: int = 0, cache_dir=None,
                      workers: int | None = None, skip_bad_images: bool = False, limit: int | None = None,
                      precompute: bool = False, source_hashes: list[str] | None = None):
    """The data set of one suite entry: released ImageNet-C if `imagenet_c` is given, else generated from the clean
    ImageNet-style folder `clean` (an ImageFolderDataset), else `clean` (any in-memory set) corrupted on the fly
    (or all at once with precompute=True)."""
    if imagenet_c is not None:
        return imagenet_c_folder(imagenet_c, corruption, severity, skip_bad_images=skip_bad_images, limit=limit)
    if isinstance(clean, ImageFolderDataset):
        return GeneratedImageNetC(clean, corruption, severity, seed=seed, cache_dir=cache_dir, workers=workers,
                                  img_size=clean.img_size, resize=clean.resize, source_hashes=source_hashes)
    if clean is None:
        raise EllbenchError("corruptions need clean data (--data) or a released ImageNet-C folder (--imagenet-c)")
    return CorruptedDataset(clean, corruption, severity, seed=seed, precompute=precompute)


def corrupted_datasets(suite: CorruptionSuite, **sources) -> dict[tuple[str, int], object]:
    """corrupted_dataset for every entry of a suite, to share between models (pass as run_corruption_suite's
    `datasets`); keyword arguments as corrupted_dataset's, e.g. clean=..., precompute=True."""
    if isinstance(sources.get("clean"), ImageFolderDataset) and sources.get("imagenet_c") is None:
        sources.setdefault("source_hashes", file_hashes(sources["clean"].files))
    return {(c, s): corrupted_dataset(c, s, **sources) for c, s in suite.entries()}


def run_corruption_suite(store, loaded, suite: CorruptionSuite, *, clean=None, imagenet_c=None, batch_size: int = 64,
                         seed: int = 0, cache_dir=None, workers: int | None = None, skip_bad_images: bool = False,
                         limit: int | None = None, baseline: str | None = None, progress: bool = True,
                         datasets: dict | None = None) -> dict:
    """Evaluate one model on every (corruption, severity) of a suite, each a resumable job; return the summary.

    `datasets` holds entries' data sets built beforehand by corrupted_datasets (with the same clean/imagenet_c).
    `loaded` is an ellbench.evaluate.LoadedModel. `clean` (a data set) also gives the clean error for relative
    mCE. AlexNet-relative CE and mCE are computed only for 1000-class (ImageNet) data; the baseline used, the
    source of the corrupted images, skipped files and small-image upsampling are recorded in the summary.
    """
    from ellbench.evaluate import clean_evaluator, run_clean
    from ellbench.runner import job_key, provenance, run_job

    source = "imagenet-c" if imagenet_c is not None else "generated" if isinstance(clean, ImageFolderDataset) \
        else "in-memory"
    baseline = baseline or suite.baseline
    hashes = file_hashes(clean.files) if source == "generated" and not datasets else None
    errors, entries, fingerprints = {}, [], []
    for corruption, severity in suite.entries():
        dataset = datasets.get((corruption, severity)) if datasets else None
        if dataset is None:
            dataset = corrupted_dataset(corruption, severity, clean=clean, imagenet_c=imagenet_c, seed=seed,
                                        cache_dir=cache_dir, workers=workers, skip_bad_images=skip_bad_images,
                                        limit=limit, source_hashes=hashes)
        notes = {"corruption_source": source, "skipped_images": getattr(dataset, "skipped", 0),
                 "upsampled": getattr(dataset, "upsampled", False)}
        key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task="corruption",
                      settings={"corruption": corruption, "severity": severity, "source": source,
                                "batch_size": batch_size}, seed=seed)
        job = run_job(store, key, dataset, clean_evaluator(loaded.module, loaded.device), batch_size=batch_size,
                      description=f"{corruption} s{severity} {loaded.name}", progress=progress, device=loaded.device,
                      provenance_extra=notes)
        errors[corruption, severity] = 1.0 - job["summary"]["accuracy"]
        entries.append({"corruption": corruption, "severity": severity, "error": errors[corruption, severity],
                        "n": job["summary"]["n"], **notes})
        fingerprints.append(dataset.fingerprint)
    clean_error = None
    if clean is not None:
        clean_job = run_clean(store, loaded, clean, batch_size=batch_size, seed=seed, progress=progress)
        clean_error = 1.0 - clean_job["summary"]["accuracy"]
    summary = {"suite": suite.name, "source": source, "entries": entries, "clean_error": clean_error,
               "mean_error": _mean(errors.values()), "upsampled": any(e["upsampled"] for e in entries),
               "skipped_images": max(e["skipped_images"] for e in entries)}
    if dataset.num_classes == 1000:
        summary.update(summarize_corruptions(errors, clean_error=clean_error, baseline=baseline))
    else:
        summary.update(mce=None, mce_note="AlexNet-relative CE/mCE is defined only for ImageNet-1k classes and data")
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id,
                  data=content_hash("\n".join(fingerprints).encode())[:16], task="corruption-summary",
                  settings={"suite": suite.name, "entries": suite.entries(), "source": source, "baseline": baseline,
                            "clean": getattr(clean, "fingerprint", None)}, seed=seed)
    return store.record_result(key, summary, provenance(loaded.device))["summary"]
