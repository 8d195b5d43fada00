"""ImageNet-C corruptions as batched torch ops on CPU or CUDA, following imagecorruptions 1.1.2 severity by severity.

`corrupt_batch(images, corruption, severity, seeds)` corrupts float [B, 3, H, W] images in [0, 1] and returns the
same shape, quantised to 8 bits as imagecorruptions' uint8 output is. Parameters per severity are those of
imagecorruptions (github.com/bethgelab/imagecorruptions, imagecorruptions/corruptions.py), which keeps Hendrycks'
ImageNet-C recipe (github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py).

Same input handling as the imagecorruptions backend (ellbench.corruptions.images.corrupt_image): inputs are quantised to
8 bits; images with a side under 32 px are upsampled (bilinear) so the short side is 32, corrupted, and brought back
with box averaging, both with Pillow's 8-bit arithmetic reproduced exactly; outputs are truncated to 8 bits the way
imagecorruptions' final `np.uint8(...)` truncates.

Randomness: every image draws from its own torch CPU generator seeded from its per-image seed (`image_seeds`, from
the same (seed, image content hash, corruption, severity) as the imagecorruptions backend), and the draws are moved
to the images' device. Results therefore do not depend on batch composition, worker processes or device; the
batched arithmetic is elementwise or per image wherever a summation order could otherwise depend on the batch.
The random streams differ from NumPy's, so stochastic corruptions match imagecorruptions in distribution, not pixel
for pixel; given the same random draws each corruption reproduces imagecorruptions (the tests check this).

Notes on faithfulness, corruption by corruption:
  - glass_blur: imagecorruptions' "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on NumPy views, so it copies
    pixel (h', w') into (h, w) and leaves (h', w') as it was. The sequential loop (rows, then columns, both
    descending) is reproduced exactly for any offsets by pointer jumping: a pixel copies from a neighbour that was
    already overwritten only when that neighbour comes later in raster order.
  - jpeg_compression runs Pillow's libjpeg on the CPU for every device (the same codec as imagecorruptions).
  - frost reads the frost pictures shipped inside the installed imagecorruptions package; the 1.1x enlargement is
    bicubic (OpenCV's and torch's cubic kernels are the same, a = -0.75), rounded to 8 bits as OpenCV's is.
  - spatter follows imagecorruptions' recipe (Canny edges, distance transform, histogram equalisation, emboss) with
    torch versions of the OpenCV steps; it is checked by statistics only.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ellbench.corruptions.names import ALL_CORRUPTIONS, MIN_SIDE, check_corruption
from ellbench.corruptions.seeds import content_hash, image_seed
from ellbench.errors import EllbenchError

TORCH_BACKEND_VERSION = "torch-1"  # bump when any output changes; part of job and cache keys


# ---------------------------------------------------------------------------------------------------------------
# Seeds and generators


def generator_seed(seed_words: np.ndarray) -> int:
    """A 64-bit torch generator seed from the 256-bit per-image seed of ellbench.corruptions.seeds.image_seed."""
    words = np.asarray(seed_words, dtype=np.uint32)
    return int(words[0]) | int(words[1]) << 32


def image_seeds(images: torch.Tensor, corruption: str, severity: int, *, seed: int = 0,
                image_hashes: Sequence[str] | None = None) -> list[int]:
    """Per-image generator seeds for float [B, 3, H, W] images in [0, 1]: from the image hash, as the other backend.

    Without `image_hashes`, each image's hash is that of its 8-bit [H, W, 3] pixels (what corrupt_tensor hashes);
    generated ImageNet-C passes the source files' hashes instead.
    """
    if image_hashes is None:
        pixels = to_uint8_hwc(images)
        image_hashes = [content_hash(np.ascontiguousarray(p)) for p in pixels]
    if len(image_hashes) != len(images):
        raise EllbenchError(f"got {len(image_hashes)} image hashes for {len(images)} images")
    return [generator_seed(image_seed(seed, h, corruption, severity)) for h in image_hashes]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3], rounded as the imagecorruptions backend quantises."""
    return (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s) % 2**64) for s in seeds]


def _draw(generators, draw: Callable[[torch.Generator], torch.Tensor], device) -> torch.Tensor:
    """One CPU draw per image, stacked on `device`: the same numbers whatever the batch or device."""
    return torch.stack([draw(g) for g in generators]).to(device)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (all batch-invariant: elementwise, or per image)


def _border_index(size: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source index for positions -pad .. size+pad-1 under a border rule.

    'nearest' repeats the edge (scipy 'nearest', OpenCV BORDER_REPLICATE); 'reflect' mirrors including the edge
    pixel (scipy 'reflect', d c b a | a b c d); 'mirror' mirrors about the edge pixel (scipy 'mirror', OpenCV's
    default BORDER_REFLECT_101, d c b | a b c d).
    """
    index = torch.arange(-pad, size + pad, device=device)
    if mode == "nearest" or size == 1:
        return index.clamp(0, size - 1)
    if mode == "reflect":
        index = index.remainder(2 * size)
        return torch.where(index < size, index, 2 * size - 1 - index)
    if mode == "mirror":
        index = index.remainder(2 * size - 2)
        return torch.where(index < size, index, 2 * size - 2 - index)
    raise ValueError(f"unknown border mode {mode!r}")


_TORCH_PAD_MODES = {"nearest": "replicate", "mirror": "reflect"}


def _pad_axis(x: torch.Tensor, pad: int, mode: str, dim: int) -> torch.Tensor:
    """Pad one of the last two axes of a [..., H, W] tensor by `pad` on both sides under a border rule."""
    size = x.shape[dim]
    torch_mode = _TORCH_PAD_MODES.get(mode)
    if torch_mode and x.dim() in (3, 4) and x.is_floating_point() and (mode == "nearest" or pad < size):
        return F.pad(x, (pad, pad, 0, 0) if dim == -1 else (0, 0, pad, pad), mode=torch_mode)
    if mode == "reflect" and pad <= size:
        return torch.cat([x.narrow(dim, 0, pad).flip(dim), x, x.narrow(dim, size - pad, pad).flip(dim)], dim=dim)
    return x.index_select(dim, _border_index(size, pad, mode, x.device))


def _pad(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Pad the last two axes by `pad` on every side under a border rule (see _border_index)."""
    return _pad_axis(_pad_axis(x, pad, mode, -2), pad, mode, -1)


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's kernel: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets**2)
    return weights / weights.sum()


def _correlate_axis(x: torch.Tensor, weights: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    """Correlate along one axis with a symmetric odd-length kernel, as shifted adds (order fixed by the kernel).

    Float64 input is summed as scipy.ndimage.correlate1d sums a symmetric kernel (centre, then each mirror pair
    added before its multiply, no fused multiply-add), so it gives scipy's values bit for bit.
    """
    radius = len(weights) // 2
    if radius == 0:
        return x * float(weights[0])
    size = x.shape[dim]
    padded = _pad_axis(x, radius, mode, dim)
    out = padded.narrow(dim, radius, size) * float(weights[radius])
    exact = x.dtype == torch.float64
    pair = torch.empty_like(out)
    for k in range(1, radius + 1):  # mirror pairs share a weight: one multiply per pair
        torch.add(padded.narrow(dim, radius - k, size), padded.narrow(dim, radius + k, size), out=pair)
        if exact:
            out.add_(pair.mul_(float(weights[radius + k])))
        else:
            out.add_(pair, alpha=float(weights[radius + k]))
    return out


def _gaussian_filter(x: torch.Tensor, sigma, *, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian / scipy gaussian_filter over the last two axes (sigma: one value or (rows, cols))."""
    sigma_rows, sigma_cols = (sigma, sigma) if np.isscalar(sigma) else sigma
    x = _correlate_axis(x, _gaussian_weights(sigma_rows, truncate), -2, mode)
    return _correlate_axis(x, _gaussian_weights(sigma_cols, truncate), -1, mode)


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] values -> 8-bit levels 0..255 (float32), clipped then truncated like imagecorruptions' uint8 cast."""
    return torch.floor(x.clamp(0, 1) * 255).float()


def _as_float64(x: torch.Tensor) -> torch.Tensor:
    """The float64 level / 255 that imagecorruptions computes (not the float32 value widened)."""
    return torch.round(x * 255).double() / 255


def _clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """imagecorruptions' clipped_zoom: the centre 1/factor of [..., H, W] enlarged by `factor`, order-1 spline.

    scipy.ndimage.zoom (order=1, grid_mode=False) maps output o to input o * (n_in - 1) / (n_out - 1), which is
    bilinear interpolation with aligned corners; the output (round(crop * factor) per side) can exceed H x W.
    """
    height, width = x.shape[-2:]
    crop_h, crop_w = math.ceil(height / float(factor)), math.ceil(width / float(factor))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    size = (int(round(crop_h * factor)), int(round(crop_w * factor)))
    crop = x[..., top:top + crop_h, left:left + crop_w]
    shape = crop.shape
    flat = crop.reshape(-1, 1, crop_h, crop_w)
    zoomed = F.interpolate(flat, size=size, mode="bilinear", align_corners=True)
    return zoomed.reshape(*shape[:-2], *size)


def _motion_kernel(radius: int, sigma: float) -> np.ndarray:
    """imagecorruptions' motion-blur weights: a one-sided Gaussian over 2 * radius + 1 taps, normalised."""
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-taps**2 / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    return weights / weights.sum()


def _motion_shifts(radius: int, angle: float, height: int, width: int) -> list[tuple[int, int]]:
    """(dy, dx) of each tap along the blur direction; stops where a shift reaches the image size, as imagecorruptions
    does (its kernel then does not sum to 1)."""
    taps = 2 * radius + 1
    point = (taps * np.sin(np.deg2rad(angle)), taps * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    shifts = []
    for i in range(taps):
        dy, dx = -math.ceil(i * point[0] / hypot - 0.5), -math.ceil(i * point[1] / hypot - 0.5)
        if abs(dy) >= height or abs(dx) >= width:
            break
        shifts.append((dy, dx))
    return shifts


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angles: Sequence[float]) -> torch.Tensor:
    """Sum of edge-replicated shifts of each image [C, H, W] along its own angle (imagecorruptions' _motion_blur).

    In float64, multiplying then adding tap by tap, as imagecorruptions does: on flat regions the exact sum is the
    pixel's own level, and only the same rounding truncates it to the same 8-bit level.
    """
    height, width = x.shape[-2:]
    weights = _motion_kernel(radius, sigma)
    plans = [_motion_shifts(radius, float(a), height, width) for a in angles]
    pad = max((max(abs(dy), abs(dx)) for plan in plans for dy, dx in plan), default=0)
    padded = _pad(x.double(), pad, "nearest")
    out = []
    for image, plan in zip(padded, plans, strict=True):
        acc = torch.zeros_like(image[..., :height, :width])
        term = torch.empty_like(acc)
        for weight, (dy, dx) in zip(weights, plan, strict=False):
            acc.add_(torch.mul(image[..., pad - dy:pad - dy + height, pad - dx:pad - dx + width], float(weight),
                               out=term))
        out.append(acc)
    return torch.stack(out)


# Pillow's 8-bit resampling (libImaging/Resample.c), reproduced exactly: coefficients in 22-bit fixed point,
# horizontal pass then vertical pass, each rounded and clipped to 8 bits.
_PIL_PRECISION_BITS = 22
_PIL_FILTERS = {
    "box": (0.5, lambda t: 1.0 if -0.5 < t <= 0.5 else 0.0),
    "bilinear": (1.0, lambda t: max(0.0, 1.0 - abs(t))),
}


@functools.lru_cache(maxsize=64)
def _pil_coefficients(in_size: int, out_size: int, filter_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(input index [out, taps], fixed-point weight [out, taps]) of Pillow's resampling along one axis."""
    support, kernel = _PIL_FILTERS[filter_name]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), dtype=np.int64)
    fixed = np.zeros((out_size, taps), dtype=np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        weights = [kernel((first + t - center + 0.5) / filter_scale) for t in range(count)]
        total = sum(weights)
        for t, w in enumerate(weights):
            w = w / total if total else w
            index[out, t] = first + t
            fixed[out, t] = int(0.5 + w * (1 << _PIL_PRECISION_BITS)) if w >= 0 else int(-0.5 + w * (1 << 22))
    return index, fixed


def _pil_resample_axis(levels: torch.Tensor, out_size: int, dim: int, filter_name: str) -> torch.Tensor:
    """One pass of Pillow's resampling along `dim` of int32 levels. Box and bilinear weights are non-negative and
    sum to about 2^22, so 255 * 2^22 + rounding stays below 2^31: int32 is exact."""
    index, fixed = _pil_coefficients(levels.shape[dim], out_size, filter_name)
    index = torch.from_numpy(index).to(levels.device)
    fixed = torch.from_numpy(fixed.astype(np.int32)).to(levels.device)
    shape = [1] * levels.dim()
    shape[dim] = out_size
    acc = levels.index_select(dim, index[:, 0]) * fixed[:, 0].reshape(shape) + (1 << (_PIL_PRECISION_BITS - 1))
    for t in range(1, index.shape[1]):
        acc.add_(levels.index_select(dim, index[:, t]) * fixed[:, t].reshape(shape))
    return (acc >> _PIL_PRECISION_BITS).clamp_(0, 255)


def pil_resize(levels: torch.Tensor, size: tuple[int, int], filter_name: str) -> torch.Tensor:
    """Pillow's Image.resize((W, H), BOX or BILINEAR) of 8-bit images [..., H, W] given as integer levels."""
    height, width = size
    out = levels.to(torch.int32)
    if out.shape[-1] != width:
        out = _pil_resample_axis(out, width, -1, filter_name)
    if out.shape[-2] != height:
        out = _pil_resample_axis(out, height, -2, filter_name)
    return out


@functools.lru_cache(maxsize=64)
def _pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source pixels of Pillow's NEAREST resize: a running sum of in/out from half a step, truncated (Geometry.c)."""
    step, position, index = in_size / out_size, 0.5 * (in_size / out_size), []
    for _ in range(out_size):
        index.append(int(position))
        position += step
    return np.minimum(np.array(index, dtype=np.int64), in_size - 1)


def pil_resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's Image.resize((W, H), NEAREST) of [..., H, W]."""
    rows = torch.from_numpy(_pil_nearest_index(x.shape[-2], size[0])).to(x.device)
    cols = torch.from_numpy(_pil_nearest_index(x.shape[-1], size[1])).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


# ---------------------------------------------------------------------------------------------------------------
# The corruptions. Each takes x: float32 [B, 3, H, W] in [0, 1] (8-bit levels / 255), the severity and one CPU
# generator per image, and returns [0, 1] values before the final 8-bit truncation. Stochastic corruptions draw
# first (`_draw_*`) and apply second (`_apply_*`), so that tests can feed imagecorruptions' own draws.

# --- noise


GAUSSIAN_NOISE = {1: 0.08, 2: 0.12, 3: 0.18, 4: 0.26, 5: 0.38}  # standard deviation
SHOT_NOISE = {1: 60, 2: 25, 3: 12, 4: 5, 5: 3}  # photons per unit intensity
IMPULSE_NOISE = {1: 0.03, 2: 0.06, 3: 0.09, 4: 0.17, 5: 0.27}  # fraction of values replaced by 0 or 1
SPECKLE_NOISE = {1: 0.15, 2: 0.2, 3: 0.35, 4: 0.45, 5: 0.6}  # standard deviation of the multiplicative noise


def _standard_normal(x, generators):
    return _draw(generators, lambda g: torch.randn(x.shape[1:], generator=g), x.device)


def gaussian_noise(x, severity, generators):
    return _apply_gaussian_noise(x, severity, _standard_normal(x, generators))


def _apply_gaussian_noise(x, severity, normal):
    return x + normal * GAUSSIAN_NOISE[severity]


def shot_noise(x, severity, generators):
    uniforms = _draw(generators, lambda g: torch.rand(x.shape[1:], generator=g), x.device)
    return _apply_shot_noise(x, severity, uniforms)


def _apply_shot_noise(x, severity, uniforms):
    """Poisson(level / 255 * photons) / photons, sampled by inverting the exact CDF at a uniform u.

    An 8-bit image has only 256 rates, so their CDFs are tabulated once. A guide table (Chen and Asau's method)
    gives, for each rate and each of GUIDE_BUCKETS equal slices of [0, 1), where in the flattened CDF table the
    slice's first count sits; the few uniforms that need it then step up until CDF(count) > u.
    """
    photons = SHOT_NOISE[severity]
    cdf, row_start, guide = (t.to(x.device) for t in _poisson_tables(photons))
    levels = torch.round(x * 255).to(torch.int32).flatten()
    u = uniforms.flatten()
    bucket = (u * GUIDE_BUCKETS).to(torch.int32).clamp_(max=GUIDE_BUCKETS - 1)
    position = guide.index_select(0, levels * GUIDE_BUCKETS + bucket)  # index into the flattened CDF table
    active = (cdf.index_select(0, position) <= u).nonzero().flatten()
    while active.numel():
        position.index_add_(0, active, torch.ones_like(active, dtype=position.dtype))
        active = active[cdf.index_select(0, position.index_select(0, active)) <= u.index_select(0, active)]
    return (position - row_start.index_select(0, levels)).view_as(x).to(x.dtype) / photons


GUIDE_BUCKETS = 256


@functools.lru_cache(maxsize=8)
def _poisson_tables(photons: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rates k / 255 * photons, k = 0..255: the CDFs P(N <= n) flattened row after row (float32), each row's
    start, and the guide table [256 * GUIDE_BUCKETS]: row start + #{n : CDF(n) <= j / GUIDE_BUCKETS}.

    A row runs until its CDF is within 1e-16 of 1; its last entry is set to 1 so that every u < 1 finds a count.
    """
    rows, guides, start = [], [], 0
    slices = torch.arange(GUIDE_BUCKETS, dtype=torch.float64) / GUIDE_BUCKETS
    for level in range(256):
        rate = level / 255.0 * photons
        pmf, n = math.exp(-rate), 0
        total, cdf = pmf, []
        while 1.0 - total > 1e-16 and n < 10 * photons + 100:
            cdf.append(total)
            n += 1
            pmf *= rate / n
            total += pmf
        row = torch.tensor([*cdf, 1.0], dtype=torch.float64).float()
        guides.append(start + torch.searchsorted(row.double(), slices, right=True))
        rows.append(row)
        start += len(row)
    row_start = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0).to(torch.int32)
    return torch.cat(rows), row_start, torch.cat(guides).to(torch.int32)


def impulse_noise(x, severity, generators):
    uniforms = _draw(generators, lambda g: torch.rand((2, *x.shape[1:]), generator=g), x.device)
    flipped = uniforms[:, 0] < IMPULSE_NOISE[severity]
    salted = uniforms[:, 1] < 0.5
    return _apply_impulse_noise(x, flipped, salted)


def _apply_impulse_noise(x, flipped, salted):
    return torch.where(flipped, salted.to(x.dtype), x)


def speckle_noise(x, severity, generators):
    return _apply_speckle_noise(x, severity, _standard_normal(x, generators))


def _apply_speckle_noise(x, severity, normal):
    return x + x * (normal * SPECKLE_NOISE[severity])


# --- blur

GAUSSIAN_BLUR = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6}  # sigma in pixels
GLASS_BLUR = {1: (0.7, 1, 2), 2: (0.9, 2, 1), 3: (1, 2, 3), 4: (1.1, 3, 2), 5: (1.5, 4, 2)}  # sigma, reach, rounds
DEFOCUS_BLUR = {1: (3, 0.1), 2: (4, 0.5), 3: (6, 0.5), 4: (8, 0.5), 5: (10, 0.5)}  # disk radius, anti-alias sigma
MOTION_BLUR = {1: (10, 3), 2: (15, 5), 3: (15, 8), 4: (15, 12), 5: (20, 15)}  # radius, sigma
ZOOM_BLUR = {1: (1, 1.11, 0.01), 2: (1, 1.16, 0.01), 3: (1, 1.21, 0.02), 4: (1, 1.26, 0.02), 5: (1, 1.31, 0.03)}


def gaussian_blur(x, severity, generators):
    return _gaussian_filter(_as_float64(x), GAUSSIAN_BLUR[severity])  # float64, as skimage filters


def _draw_glass_offsets(x, severity, generators):
    """Per image and round, the (dy, dx) offset in [-reach, reach) drawn for each interior pixel."""
    _, reach, rounds = GLASS_BLUR[severity]
    height, width = x.shape[-2:]
    shape = (rounds, 2, max(height - 2 * reach, 0), max(width - 2 * reach, 0))
    return _draw(generators, lambda g: torch.randint(-reach, reach, shape, generator=g), x.device)


def glass_blur(x, severity, generators):
    return _apply_glass_blur(x, severity, _draw_glass_offsets(x, severity, generators))


def _apply_glass_blur(x, severity, offsets):
    """offsets: int [B, rounds, 2 (dy, dx), H - 2 reach, W - 2 reach], for pixels (reach+1 .. H-reach, ...)."""
    sigma, reach, rounds = GLASS_BLUR[severity]
    levels = _to_levels(_gaussian_filter(_as_float64(x), sigma)).double()  # blurred, then truncated to uint8
    sources = None
    for r in range(rounds):
        step = _glass_sources(offsets[:, r], reach, *x.shape[-2:])
        sources = step if sources is None else sources.gather(1, step)
    batch, channels = x.shape[:2]
    shuffled = levels.flatten(2).gather(2, sources[:, None, :].expand(batch, channels, -1)).view_as(x)
    return _gaussian_filter(shuffled / 255, sigma)


def _glass_sources(offsets: torch.Tensor, reach: int, height: int, width: int) -> torch.Tensor:
    """For one round of glass blur's copy loop, the flat index each pixel finally copies from: [B, H * W].

    The loop visits interior pixels p in descending raster order and copies the current value of q = p + offset
    into p. That value is q's original one unless q was visited before p (q interior and later in raster order),
    in which case it is whatever q copied: following those links to their end gives the source (pointer jumping).
    """
    batch, device = offsets.shape[0], offsets.device
    rows = torch.arange(reach + 1, height - reach + 1, device=device)
    cols = torch.arange(reach + 1, width - reach + 1, device=device)
    target_rows = rows[None, :, None] + offsets[:, 0]
    target_cols = cols[None, None, :] + offsets[:, 1]
    target = target_rows * width + target_cols  # [B, h, w]
    here = (rows[:, None] * width + cols[None, :]).expand_as(target)
    visited_before = ((target_rows >= reach + 1) & (target_rows <= height - reach) & (target_cols >= reach + 1)
                      & (target_cols <= width - reach) & (target > here))
    identity = torch.arange(height * width, device=device).expand(batch, -1)
    copy_from, link = identity.clone(), identity.clone()
    interior = (slice(None), slice(reach + 1, height - reach + 1), slice(reach + 1, width - reach + 1))
    copy_from.view(batch, height, width)[interior] = target
    link.view(batch, height, width)[interior] = torch.where(visited_before, target, here)
    while True:  # link -> the last pixel of each chain, doubling the distance each pass
        jumped = link.gather(1, link)
        if torch.equal(jumped, link):
            break
        link = jumped
    return copy_from.gather(1, link)


@functools.lru_cache(maxsize=8)
def _defocus_kernel(radius: int, alias_sigma: float) -> np.ndarray:
    """imagecorruptions' disk(): a normalised disk on a grid of at least 17 x 17, blurred by OpenCV's GaussianBlur
    (3x3 below radius 9, else 5x5; default border BORDER_REFLECT_101)."""
    half, ksize = (8, 3) if radius <= 8 else (radius, 5)
    grid = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    offsets = np.arange(ksize) - (ksize - 1) / 2  # cv2.getGaussianKernel with a given sigma
    gauss = np.exp(-(offsets**2) / (2 * alias_sigma**2))
    gauss /= gauss.sum()
    blurred = torch.from_numpy(disk)[None, None]
    blurred = _correlate_axis(blurred, gauss, -2, "mirror")
    blurred = _correlate_axis(blurred, gauss, -1, "mirror")[0, 0].numpy()
    # Small disks leave most of the 17 x 17 grid at ~1e-22 (the anti-alias Gaussian's far tail): trim rings of
    # such weights, which cannot move a result by an 8-bit level, to spare their multiplications.
    trim = 0
    while trim < half and np.abs(blurred[trim]).max() < 1e-12:
        trim += 1
    return blurred[trim:len(blurred) - trim, trim:len(blurred) - trim].astype(np.float32)  # float32 as theirs


def defocus_blur(x, severity, generators):
    """cv2.filter2D with the disk kernel (correlation, BORDER_REFLECT_101), one image at a time so the result never
    depends on the batch."""
    kernel = torch.from_numpy(_defocus_kernel(*DEFOCUS_BLUR[severity])).to(x.device)
    pad = kernel.shape[-1] // 2
    weight = kernel.to(x.dtype)[None, None].expand(x.shape[1], 1, -1, -1)
    padded = _pad(x, pad, "mirror")
    return torch.cat([F.conv2d(image[None], weight, groups=x.shape[1]) for image in padded])


def motion_blur(x, severity, generators):
    angles = _draw(generators, lambda g: torch.rand((), dtype=torch.float64, generator=g), "cpu") * 90 - 45
    return _apply_motion_blur(x, severity, angles.tolist())


def _apply_motion_blur(x, severity, angles):
    """Blurs the 8-bit levels (imagecorruptions blurs the uint8 image): returns levels 0..255, float64."""
    radius, sigma = MOTION_BLUR[severity]
    return _motion_blur(torch.round(x * 255), radius, sigma, angles)


def zoom_blur(x, severity, generators):
    height, width = x.shape[-2:]
    factors = np.arange(*ZOOM_BLUR[severity])
    acc = torch.zeros_like(x)
    for factor in factors:
        acc.add_(_clipped_zoom(x, factor)[..., :height, :width])
    return (x + acc) / (len(factors) + 1)


# --- weather

# snow: mean and std of the flake field, its zoom, threshold, blur radius and sigma, weight kept of the image
SNOW = {1: (0.1, 0.3, 3, 0.5, 10, 4, 0.8), 2: (0.2, 0.3, 2, 0.5, 12, 4, 0.7), 3: (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        4: (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), 5: (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)}
FROST = {1: (1, 0.4), 2: (0.8, 0.6), 3: (0.7, 0.7), 4: (0.65, 0.7), 5: (0.6, 0.75)}  # image weight, frost weight
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # imagecorruptions draws 0..4
FOG = {1: (1.5, 2), 2: (2.0, 2), 3: (2.5, 1.7), 4: (2.5, 1.5), 5: (3.0, 1.4)}  # fog strength, fractal decay


def _draw_snow(x, severity, generators):
    """Per image: the flake field [H, W] (normal with the severity's mean and std) and the blur angle in degrees."""
    mean, std = SNOW[severity][:2]
    fields = _draw(generators, lambda g: torch.randn(x.shape[-2:], generator=g), x.device) * std + mean
    angles = [float(torch.rand((), dtype=torch.float64, generator=g)) * 90 - 135 for g in generators]
    return fields, angles


def snow(x, severity, generators):
    return _apply_snow(x, severity, *_draw_snow(x, severity, generators))


def _apply_snow(x, severity, fields, angles):
    _, _, zoom, threshold, radius, sigma, keep = SNOW[severity]
    height, width = x.shape[-2:]
    flakes = _clipped_zoom(fields[:, None], zoom)  # [B, 1, >= H, >= W]
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp(0, 1)
    flakes = _motion_blur(flakes, radius, sigma, angles)
    flakes = (torch.round(flakes * 255)[..., :height, :width] / 255).to(x.dtype)  # the layer rounded to 8 bits
    grey = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114  # cv2 RGB2GRAY
    x = keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + flakes + flakes.flip(-2, -1)


def _frost_folder() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise EllbenchError("frost needs the frost pictures of the imagecorruptions package, which is not installed")
    return Path(spec.origin).parent / "frost"


@functools.lru_cache(maxsize=16)
def _frost_picture(index: int, height: int, width: int) -> torch.Tensor:
    """Frost picture `index`, enlarged as imagecorruptions does for an H x W image: uint8 [3, h, w] on the CPU."""
    from PIL import Image

    path = _frost_folder() / FROST_FILES[index]
    with Image.open(path) as picture:
        frost = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float()
    frost_h, frost_w = frost.shape[-2:]
    # Enlarge a picture that is too small on some side until it fits (both sides short: the larger factor), then
    # by 1.1 in every case.
    scale = max(height / frost_h if frost_h < height else 1.0, width / frost_w if frost_w < width else 1.0) * 1.1
    size = (int(np.ceil(frost_h * scale)), int(np.ceil(frost_w * scale)))
    enlarged = F.interpolate(frost[None], size=size, mode="bicubic", align_corners=False)[0]
    return enlarged.round().clamp(0, 255).to(torch.uint8)  # OpenCV resizes uint8 to uint8


def _draw_frost(x, severity, generators):
    """Per image: which frost picture, and the top-left corner of the crop."""
    height, width = x.shape[-2:]
    draws = []
    for g in generators:
        index = int(torch.randint(len(FROST_FILES), (), generator=g))
        frost_h, frost_w = _frost_picture(index, height, width).shape[-2:]
        top = int(torch.randint(frost_h - height, (), generator=g))
        left = int(torch.randint(frost_w - width, (), generator=g))
        draws.append((index, top, left))
    return draws


def frost(x, severity, generators):
    return _apply_frost(x, severity, _draw_frost(x, severity, generators))


def _apply_frost(x, severity, draws):
    """c * image + c' * frost crop on 8-bit levels in float64, as imagecorruptions computes it: returns levels."""
    image_weight, frost_weight = FROST[severity]
    height, width = x.shape[-2:]
    crops = torch.stack([_frost_picture(index, height, width)[:, top:top + height, left:left + width]
                         for index, top, left in draws]).to(x.device, torch.float64)
    return image_weight * torch.round(x * 255).double() + frost_weight * crops


def _plasma_sizes(map_size: int) -> list[int]:
    """Side of the square grid filled at each step of the diamond-square loop (step = map_size, map_size/2, ... 2)."""
    sizes, step = [], map_size
    while step >= 2:
        sizes.append(map_size // step)
        step //= 2
    return sizes


def _draw_fog(x, severity, generators):
    """Per image, the uniform [0, 1) draws of the plasma fractal: for each step, [3 (square, two diamonds), n, n]."""
    map_size = 1 << (max(x.shape[-2:]) - 1).bit_length()
    sizes = _plasma_sizes(map_size)
    total = sum(3 * n * n for n in sizes)
    flat = _draw(generators, lambda g: torch.rand(total, dtype=torch.float64, generator=g), x.device)
    draws, start = [], 0
    for n in sizes:
        draws.append(flat[:, start:start + 3 * n * n].reshape(-1, 3, n, n))
        start += 3 * n * n
    return draws


def fog(x, severity, generators):
    return _apply_fog(x, severity, _draw_fog(x, severity, generators))


def _plasma_fractal(uniforms: list[torch.Tensor], map_size: int, decay: float) -> torch.Tensor:
    """Diamond-square height maps [B, S, S] in [0, 1] (imagecorruptions' plasma_fractal, after FLHerne/mapgen).

    uniforms[k] holds step k's draws in [0, 1): the random part added to each new point is wibble * U(-wibble,
    wibble), with wibble starting at 100 and divided by `decay` after each step.
    """
    batch = uniforms[0].shape[0]
    grid = torch.zeros(batch, map_size, map_size, dtype=torch.float64, device=uniforms[0].device)
    step, wibble = map_size, 100.0
    for draws in uniforms:
        half = step // 2

        def perturbed(mean, u, wibble=wibble):
            return mean / 4 + wibble * (-wibble + 2 * wibble * u)

        corners = grid[:, 0::step, 0::step]
        square = corners + corners.roll(-1, dims=1)
        square = square + square.roll(-1, dims=2)
        grid[:, half::step, half::step] = perturbed(square, draws[:, 0])
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        left_right = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        grid[:, 0::step, half::step] = perturbed(left_right, draws[:, 1])
        up_down = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        grid[:, half::step, 0::step] = perturbed(up_down, draws[:, 2])
        step //= 2
        wibble /= decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def _apply_fog(x, severity, uniforms):
    strength, decay = FOG[severity]
    height, width = x.shape[-2:]
    map_size = uniforms[-1].shape[-1] * 2
    plasma = _plasma_fractal(uniforms, map_size, decay)[:, None, :height, :width].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma) * peak / (peak + strength)


# --- digital

CONTRAST = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1, 5: 0.05}  # factor on the distance from the mean
BRIGHTNESS = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}  # added to HSV value
SATURATE = {1: (0.3, 0), 2: (0.1, 0), 3: (2, 0), 4: (5, 0.1), 5: (20, 0.2)}  # HSV saturation * a + b
JPEG_QUALITY = {1: 25, 2: 18, 3: 15, 4: 10, 5: 7}
PIXELATE = {1: 0.6, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.25}  # size of the box-downsampled image, relative
ELASTIC_ALPHA = {1: 250 * 0.05, 2: 250 * 0.065, 3: 250 * 0.085, 4: 250 * 0.1, 5: 250 * 0.12}


def contrast(x, severity, generators):
    means = x.double().mean(dim=(2, 3), keepdim=True).to(x.dtype)  # float64: a sum order never shows
    return (x - means) * CONTRAST[severity] + means


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [B, 3, H, W] in [0, 1] -> HSV, the standard formulas in the operation order of skimage.color.rgb2hsv.

    Run in float64 so that the values, and so the 8-bit truncation of results that land a hair below a level, are
    those of imagecorruptions (its HSV corruptions truncate e.g. 197.99999999999997 to 197).
    """
    red, green, blue = rgb.unbind(1)
    value = rgb.amax(dim=1)
    delta = value - rgb.amin(dim=1)
    flat = delta == 0
    safe_delta = torch.where(flat, 1.0, delta)
    saturation = torch.where(flat, 0.0, delta / torch.where(value == 0, 1.0, value))
    hue = torch.where(blue == value, 4.0 + (red - green) / safe_delta,  # skimage: the last matching channel wins
                      torch.where(green == value, 2.0 + (blue - red) / safe_delta, (green - blue) / safe_delta))
    hue = torch.where(flat, 0.0, torch.remainder(hue / 6.0, 1.0))
    return torch.stack([hue, saturation, value], dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB, the standard sector formulas in the operation order of skimage.color.hsv2rgb."""
    hue, saturation, value = hsv.unbind(1)
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.remainder(6)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    candidates = torch.stack([value, t, p, q], dim=1)
    # (R, G, B) of each sector, as indices into (value, t, p, q)
    pick = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]], device=hsv.device)
    return candidates.gather(1, pick[sector.long()].permute(0, 3, 1, 2))


def brightness(x, severity, generators):
    """HSV value + c, clipped to 1; hue and saturation kept."""
    hsv = _rgb_to_hsv(_as_float64(x))
    hsv[:, 2] = (hsv[:, 2] + BRIGHTNESS[severity]).clamp(0, 1)
    return _hsv_to_rgb(hsv)


def saturate(x, severity, generators):
    """HSV saturation * a + b, clipped to [0, 1]; hue and value kept (grey pixels have hue 0, so they turn red)."""
    scale, shift = SATURATE[severity]
    hsv = _rgb_to_hsv(_as_float64(x))
    hsv[:, 1] = (hsv[:, 1] * scale + shift).clamp(0, 1)
    return _hsv_to_rgb(hsv)


def jpeg_compression(x, severity, generators):
    """Pillow JPEG at the severity's quality, encoded and decoded on the CPU (imagecorruptions' own codec)."""
    from PIL import Image

    pixels = _to_levels(x).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY[severity])
        decoded.append(np.asarray(Image.open(buffer)))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def pixelate(x, severity, generators):
    """Pillow BOX down to int(side * c) then NEAREST back up, both in Pillow's 8-bit arithmetic."""
    height, width = x.shape[-2:]
    factor = PIXELATE[severity]
    small = pil_resize(_to_levels(x), (int(height * factor), int(width * factor)), "box")
    return pil_resize_nearest(small, (height, width)).to(x.dtype) / 255


def _draw_elastic(x, severity, generators):
    """Per image, the uniform displacement fields (dx, dy) before smoothing: [B, 2, H, W]."""
    reach = x.shape[-2] * 0.005  # imagecorruptions uses the height for both directions
    uniforms = _draw(generators, lambda g: torch.rand((2, *x.shape[-2:]), dtype=torch.float64, generator=g), x.device)
    return uniforms * (2 * reach) - reach


def elastic_transform(x, severity, generators):
    return _apply_elastic(x, severity, _draw_elastic(x, severity, generators))


def _apply_elastic(x, severity, fields):
    """Smooth the fields (Gaussian, sigma 1% of each side, truncate 3, mirrored border), scale, resample bilinearly
    with mirrored borders (scipy map_coordinates order=1, mode='reflect')."""
    height, width = x.shape[-2:]
    smooth = _gaussian_filter(fields.float(), (0.01 * height, 0.01 * width), mode="reflect", truncate=3)
    displacement = smooth * ELASTIC_ALPHA[severity]
    rows = torch.arange(height, device=x.device, dtype=torch.float32)[:, None] + displacement[:, 1]
    cols = torch.arange(width, device=x.device, dtype=torch.float32)[None, :] + displacement[:, 0]
    # grid_sample with align_corners=False puts pixel centres at (2i + 1) / n - 1 and reflects about the image
    # border (-0.5 and n - 0.5 in pixels), which is scipy's 'reflect'.
    grid = torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# --- extra corruptions (imagecorruptions' held-out four)

SPATTER = {1: (0.65, 0.3, 4, 0.69, 0.6, False), 2: (0.65, 0.3, 3, 0.68, 0.6, False),
           3: (0.65, 0.3, 2, 0.68, 0.5, False), 4: (0.65, 0.3, 1, 0.65, 1.5, True),
           5: (0.67, 0.4, 1, 0.65, 1.5, True)}  # mean, std, blur sigma, threshold, strength, mud (else water)


def spatter(x, severity, generators):
    mean, std = SPATTER[severity][:2]
    liquid = _draw(generators, lambda g: torch.randn(x.shape[-2:], generator=g), x.device) * std + mean
    return _apply_spatter(x, severity, liquid)


def _apply_spatter(x, severity, liquid):
    _, _, sigma, threshold, strength, mud = SPATTER[severity]
    liquid = _gaussian_filter(liquid[:, None], sigma)
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    if mud:
        mask = _gaussian_filter((liquid > threshold).to(x.dtype), strength)
        mask = torch.where(mask < 0.8, 0.0, mask)
        colour = torch.tensor([63, 42, 20], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
        return x * (1 - mask) + colour * mask
    layer = torch.floor(liquid * 255).clamp(0, 255)  # astype(uint8); the smoothed layer stays below 1
    mask = layer * _spatter_distance(layer)
    mask = mask / mask.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12) * strength
    # imagecorruptions names the colour (175, 238, 238) "BGR" but adds it to RGB channels in that order
    colour = torch.tensor([175, 238, 238], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
    return x + mask * colour


def _spatter_distance(layer: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' water texture from the 8-bit liquid layer [B, 1, H, W]: distance to the Canny edges
    (truncated at 20), 3x3 box blur, histogram equalisation, an emboss filter and another 3x3 box blur."""
    edges = _canny(layer, 50, 150)
    dist = _distance_to(edges, 20).clamp(max=20)
    dist = torch.floor(_box3(dist))  # cv2.blur, then astype(uint8)
    dist = _equalize_hist(dist)
    emboss = torch.tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=dist.dtype, device=dist.device)
    padded = _pad(dist, 1, "mirror")
    height, width = dist.shape[-2:]
    embossed = sum(emboss[i, j] * padded[..., i:i + height, j:j + width] for i in range(3) for j in range(3))
    embossed = embossed.round().clamp(0, 255)  # filter2D to CV_8U saturates
    return _box3(embossed)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur with a 3x3 box (BORDER_REFLECT_101)."""
    ones = np.ones(3) / 3
    return _correlate_axis(_correlate_axis(x, ones, -2, "mirror"), ones, -1, "mirror")


def _canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """cv2.Canny(image, low, high) with its defaults (3x3 Sobel, L1 gradient magnitude): a bool edge map.

    Non-maximum suppression along the gradient direction quantised to 0, 45, 90 and 135 degrees; hysteresis by
    growing strong edges into connected weak ones until nothing changes.
    """
    padded = _pad(image, 1, "nearest")  # OpenCV's Canny takes its Sobel derivatives with BORDER_REPLICATE
    height, width = image.shape[-2:]

    def at(dy, dx):
        return padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    magnitude = gx.abs() + gy.abs()
    padded_mag = F.pad(magnitude, (1, 1, 1, 1))

    def mag_at(dy, dx):
        return padded_mag[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    ax, ay = gx.abs(), gy.abs()
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay < ax * tan22  # gradient along x: compare left and right
    vertical = ay > ax / tan22
    same_sign = (gx * gy) > 0
    left_right = (magnitude > mag_at(0, -1)) & (magnitude >= mag_at(0, 1))
    up_down = (magnitude > mag_at(-1, 0)) & (magnitude >= mag_at(1, 0))
    diag_main = (magnitude > mag_at(-1, -1)) & (magnitude > mag_at(1, 1))
    diag_anti = (magnitude > mag_at(-1, 1)) & (magnitude > mag_at(1, -1))
    maximum = torch.where(horizontal, left_right,
                          torch.where(vertical, up_down, torch.where(same_sign, diag_main, diag_anti)))
    candidate = maximum & (magnitude > low)
    edges = candidate & (magnitude > high)
    while True:
        grown = candidate & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _distance_to(edges: torch.Tensor, limit: int) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest edge pixel, exact up to `limit` (larger values: >= limit).

    Two separable passes of squared distances (Felzenszwalb and Huttenlocher's decomposition), over a window of
    +-limit: exact wherever the true distance is at most `limit`, which is all a distance truncated there needs.
    """
    big = float(4 * limit * limit + 1)
    squared = torch.where(edges, 0.0, big).to(torch.float32)
    for dim in (-1, -2):
        size = squared.shape[dim]
        padded = F.pad(squared, (limit, limit) if dim == -1 else (0, 0, limit, limit), value=big)
        best = padded.narrow(dim, limit, size).clone()
        for k in range(1, limit + 1):
            best = torch.minimum(best, padded.narrow(dim, limit - k, size) + k * k)
            best = torch.minimum(best, padded.narrow(dim, limit + k, size) + k * k)
        squared = best
    return squared.sqrt()


def _equalize_hist(levels: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist of integer levels [B, 1, H, W] in 0..255, per image."""
    out = []
    for image in levels.to(torch.int64):
        flat = image.flatten()
        hist = torch.bincount(flat, minlength=256)
        total = flat.numel()
        first = int(hist.nonzero()[0])
        if int(hist[first]) == total:
            out.append(torch.full_like(image, first))
            continue
        scale = 255.0 / (total - int(hist[first]))
        cdf = torch.cumsum(hist, 0) - hist[first]
        lut = torch.clamp(torch.round(cdf.double() * scale), 0, 255)
        lut[:first + 1] = 0
        out.append(lut.index_select(0, flat).view_as(image))
    return torch.stack(out).to(levels.dtype)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "spatter": spatter, "saturate": saturate,
}
assert tuple(CORRUPTIONS) == ALL_CORRUPTIONS  # same names, same order as imagecorruptions

# Corruptions whose functions return 8-bit levels (0..255) rather than [0, 1]: imagecorruptions computes them on
# the uint8 image's levels, and so do we, so that results that land exactly on a level truncate alike.
LEVEL_OUTPUTS = ("motion_blur", "frost")
# Stochastic corruptions draw from the per-image generator; the others are pure functions of the image.
STOCHASTIC = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
              "elastic_transform", "speckle_noise", "spatter")


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


CPU_CHUNK = 4  # images per pass on the CPU: small enough that a pass's tensors stay in cache


def finish(corruption: str, values: torch.Tensor) -> torch.Tensor:
    """A corruption function's output -> 8-bit levels (float32): values in [0, 1], or levels for LEVEL_OUTPUTS."""
    if corruption in LEVEL_OUTPUTS:
        return torch.floor(values.clamp(0, 255)).float()
    return _to_levels(values)


def corrupt_levels(levels: torch.Tensor, corruption: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """Corrupt 8-bit levels (float [B, 3, H, W], integers 0..255, short side >= 32); returns levels the same way.

    On the CPU the batch goes through in chunks of CPU_CHUNK images (the results are the same either way).
    """
    function = CORRUPTIONS[corruption]
    chunk = CPU_CHUNK if levels.device.type == "cpu" else len(levels)
    parts = [finish(corruption, function(levels[i:i + chunk] / 255, severity, _generators(seeds[i:i + chunk])))
             for i in range(0, len(levels), chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def corrupt_batch(images: torch.Tensor, corruption: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    """Corrupt float [B, 3, H, W] images in [0, 1] on their device; returns the same shape, in 8-bit steps.

    `seeds` has one integer per image (`image_seeds`); an image's result depends only on its pixels, the
    corruption, the severity and its seed. Images with a side under 32 px go through imagecorruptions' minimum
    size as the other backend does: Pillow-bilinear up to a short side of 32, corrupted, Pillow-box back down.
    """
    check_corruption(corruption, severity)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise EllbenchError(f"expected float images [B, 3, H, W], got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise EllbenchError(f"expected float images in [0, 1], got {images.dtype}")
    if len(seeds) != len(images):
        raise EllbenchError(f"got {len(seeds)} seeds for {len(images)} images")
    if len(images) == 0:
        return images.clone()
    threads = torch.get_num_threads()
    if images.device.type == "cpu" and threads > 1 and len(images) > 1:
        return _split_over_threads(images, corruption, severity, list(seeds), min(threads, len(images)))
    return _corrupt_batch_here(images, corruption, severity, seeds)


def _split_over_threads(images: torch.Tensor, corruption: str, severity: int, seeds: list[int],
                        parts: int) -> torch.Tensor:
    """On a CPU, `parts` threads each corrupt a slice of the batch with one torch thread, instead of every op
    splitting its work over the torch threads: the ops here are many and short, and op-level parallelism waits at
    each op's end for the slowest thread (1.5x the time on 2 cores, benchmarks/corruptions_torch.py). An image's
    result depends only on its own pixels and seed, so the slices give the batch's result."""
    from concurrent.futures import ThreadPoolExecutor

    bounds = [round(i * len(images) / parts) for i in range(parts + 1)]
    saved = torch.get_num_threads()

    def one(part: int) -> torch.Tensor:
        torch.set_num_threads(1)  # this thread's own setting (OpenMP's is per thread)
        start, end = bounds[part], bounds[part + 1]
        return _corrupt_batch_here(images[start:end], corruption, severity, seeds[start:end])

    try:
        with ThreadPoolExecutor(max_workers=parts) as pool:
            return torch.cat(list(pool.map(one, range(parts))))
    finally:
        torch.set_num_threads(saved)  # libraries that keep one process-wide setting (MKL) get theirs back


def _corrupt_batch_here(images: torch.Tensor, corruption: str, severity: int, seeds: Sequence[int]) -> torch.Tensor:
    levels = (images.detach().float().clamp(0, 1) * 255).round()
    height, width = levels.shape[-2:]
    if min(height, width) >= MIN_SIDE:
        return corrupt_levels(levels, corruption, severity, seeds) / 255
    scale = MIN_SIDE / min(height, width)
    big_size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
    big = pil_resize(levels, big_size, "bilinear").float()
    corrupted = corrupt_levels(big, corruption, severity, seeds)
    return pil_resize(corrupted, (height, width), "box").float() / 255


def corrupt_tensor(images: torch.Tensor, corruption: str, severity: int, *, seed: int = 0,
                   image_hashes: Sequence[str] | None = None) -> tuple[torch.Tensor, bool]:
    """The torch backend behind the imagecorruptions backend's corrupt_tensor contract: (images, upsampled)."""
    check_corruption(corruption, severity)
    seeds = image_seeds(images, corruption, severity, seed=seed, image_hashes=image_hashes)
    return corrupt_batch(images, corruption, severity, seeds), min(images.shape[-2:]) < MIN_SIDE
