"""Fidelity of the torch corruption backend against imagecorruptions 1.1.2: pixels, statistics, model accuracy.

Three checks, each per corruption and severity (issue 21's bars):
 1. Pixels: >= 64 real photographs at 224 px (scikit-image's samples, cropped and resized several ways), each
    corrupted by both backends with the same per-image seed: mean absolute difference (in 8-bit levels) and SSIM.
    Deterministic corruptions must be within 1 level (1/255) on average. Stochastic ones cannot match pixel for
    pixel (different random streams); their row is shown next to imagecorruptions against itself with another
    seed, the distance two draws of the same corruption have.
 2. Statistics (stochastic corruptions): per photograph, the mean, standard deviation and high-frequency energy of
    the corrupted image over >= 20 seeds, for each backend. For each photograph z = |difference of the two seed
    means| / (seed-to-seed standard deviation, pooled over the backends); the bar is mean z over the photographs
    <= 1 (the backends differ by less than one seed-to-seed spread). Under identical distributions z is about 0.25.
 3. Models: a small CNN trained here on Fashion-MNIST, and ellbench's deit_micro_patch4_32 trained on digits, scored on
    their test images corrupted by each backend (both sets are under 32 px, so both backends upsample to 32 px,
    corrupt and box-downsample). Accuracy difference torch - imagecorruptions with ellbench's paired bootstrap 95%
    CI (ellbench.stats). Bar: |difference| <= 1 point, or the CI includes 0 and is at most 3 points wide. On the
    --yardstick-sets (digits: 449 test images) imagecorruptions is also scored against itself with another seed
    under the same bar: how often two draws of the reference fail it on that few images.

imagecorruptions runs over --workers processes (its cost dominates the run); --cache keeps its outputs on disk so a
re-run with the same settings skips them.

    .venv/bin/python benchmarks/corruptions_fidelity.py [--photos 64] [--seeds 20] [--stat-photos 8]
        [--glass-stat-photos 4] [--fmnist-images 4000] [--workers 2] [--cache /tmp/ctorch-cache] [--out table.md]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import multiprocessing
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ellbench.corruptions import torch_backend
from ellbench.corruptions.compat import IMAGECORRUPTIONS_VERSION
from ellbench.corruptions.images import corrupt_image
from ellbench.corruptions.names import ALL_CORRUPTIONS, SEVERITIES
from ellbench.data.photos import sample_photographs
from ellbench.stats import paired_bootstrap_ci

STOCHASTIC = torch_backend.STOCHASTIC
STATISTICS = ("mean", "std", "hf energy")


# ---------------------------------------------------------------------------------------------------------------
# Corrupting with each backend


def _reference_chunk(pixels: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    with warnings.catch_warnings():  # imagecorruptions' spatter divides 0 by 0 on blank layers (its output: 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([corrupt_image(p, corruption, severity, seed=seed)[0] for p in pixels])


class Reference:
    """imagecorruptions over a process pool, in chunks, with an optional on-disk cache of its outputs."""

    def __init__(self, pool, cache: Path | None, chunk: int):
        self.pool, self.cache, self.chunk = pool, cache, chunk

    def submit(self, pixels: np.ndarray, corruption: str, severity: int, seed: int):
        """Start corrupting; returns a function that waits for and returns uint8 [N, H, W, 3]."""
        path = None
        if self.cache is not None:
            key = hashlib.sha256(pixels.tobytes() + repr((pixels.shape, corruption, severity, seed,
                                                          IMAGECORRUPTIONS_VERSION)).encode()).hexdigest()[:24]
            path = self.cache / f"{corruption}-{severity}-{seed}-{key}.npy"
            if path.is_file():
                return lambda: np.load(path)
        futures = [self.pool.submit(_reference_chunk, pixels[i:i + self.chunk], corruption, severity, seed)
                   for i in range(0, len(pixels), self.chunk)]

        def result():
            out = np.concatenate([f.result() for f in futures])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, out)
            return out

        return result


def ours(pixels: np.ndarray, corruption: str, severity: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """The torch backend on uint8 [N, H, W, 3], seeds derived from each image's content as the other backend does."""
    out = []
    for first in range(0, len(pixels), batch_size):
        images = torch.from_numpy(pixels[first:first + batch_size]).permute(0, 3, 1, 2).float() / 255
        out.append(torch_backend.to_uint8_hwc(torch_backend.corrupt_tensor(images, corruption, severity,
                                                                                   seed=seed)[0]))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------------
# 1. Pixels


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def pixel_table(reference: Reference, photos: np.ndarray, yardstick_photos: int, corruptions,
                log) -> tuple[list[str], dict]:
    """Markdown rows and {corruption: passed} (deterministic corruptions only)."""
    rows = ["| corruption | kind | compared | " + " | ".join(f"s{s} MAD / SSIM" for s in SEVERITIES) + " | bar |",
            "|---|---|---|" + "---|" * len(SEVERITIES) + "---|"]
    verdicts = {}
    for corruption in corruptions:
        stochastic = corruption in STOCHASTIC
        pending = {s: reference.submit(photos, corruption, s, 0) for s in SEVERITIES}
        if stochastic:
            others = {s: reference.submit(photos[:yardstick_photos], corruption, s, 1) for s in SEVERITIES}
        cells, yardstick, worst = [], [], 0.0
        for severity in SEVERITIES:
            expected = pending[severity]()
            got = ours(photos, corruption, severity, 0)
            mad = np.abs(got.astype(np.float64) - expected).mean(axis=(1, 2, 3))  # per photograph, in levels
            worst = max(worst, float(mad.mean()))
            cells.append(f"{mad.mean():.3f} / {np.mean([ssim(g, e) for g, e in zip(got, expected, strict=True)]):.4f}")
            if stochastic:
                again = others[severity]()
                mad_ref = np.abs(again.astype(np.float64) - expected[:yardstick_photos]).mean()
                ssim_ref = np.mean([ssim(a, e) for a, e in zip(again, expected, strict=False)])
                yardstick.append(f"{mad_ref:.3f} / {ssim_ref:.4f}")
        if stochastic:
            rows.append(f"| {corruption} | stochastic | torch vs imagecorruptions | {' | '.join(cells)} | stats |")
            rows.append(f"| {corruption} | stochastic | imagecorruptions vs itself, another seed "
                        f"({yardstick_photos} photos) | {' | '.join(yardstick)} | |")
        else:
            verdicts[corruption] = worst <= 1.0
            rows.append(f"| {corruption} | deterministic | torch vs imagecorruptions | {' | '.join(cells)} | "
                        f"{'pass' if worst <= 1.0 else 'FAIL'} (MAD <= 1) |")
        log(rows[-1] if not stochastic else rows[-2])
    return rows, verdicts


# ---------------------------------------------------------------------------------------------------------------
# 2. Statistics over seeds


def image_statistics(pixels: np.ndarray) -> np.ndarray:
    """[N, 3]: mean, standard deviation and high-frequency energy (mean squared difference of neighbouring pixels,
    horizontally and vertically, averaged) of each uint8 image, in 8-bit levels."""
    x = pixels.astype(np.float64)
    horizontal = np.square(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    vertical = np.square(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
    return np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), (horizontal + vertical) / 2], axis=1)


def statistics_table(reference: Reference, photos: np.ndarray, seeds: int, glass_photos: int, corruptions,
                     log) -> tuple[list[str], dict]:
    rows = ["| corruption | severity | photos x seeds | " + " | ".join(f"{s}: mean z / max z" for s in STATISTICS)
            + " | bar (mean z <= 1) |", "|---|---|---|" + "---|" * len(STATISTICS) + "---|"]
    verdicts = {}
    for corruption in [c for c in corruptions if c in STOCHASTIC]:
        subset = photos[:glass_photos] if corruption == "glass_blur" else photos
        passed = True
        for severity in SEVERITIES:
            pending = [reference.submit(subset, corruption, severity, seed) for seed in range(seeds)]
            theirs = np.stack([image_statistics(p()) for p in pending], axis=1)  # [N, seeds, 3]
            mine = np.stack([image_statistics(ours(subset, corruption, severity, seed)) for seed in range(seeds)],
                            axis=1)
            spread = np.sqrt((theirs.var(axis=1, ddof=1) + mine.var(axis=1, ddof=1)) / 2)  # [N, 3]
            z = np.abs(theirs.mean(axis=1) - mine.mean(axis=1)) / np.maximum(spread, 1e-9)
            ok = bool((z.mean(axis=0) <= 1).all())
            passed &= ok
            cells = " | ".join(f"{z[:, k].mean():.2f} / {z[:, k].max():.2f}" for k in range(len(STATISTICS)))
            rows.append(f"| {corruption} | {severity} | {len(subset)} x {seeds} | {cells} | "
                        f"{'pass' if ok else 'FAIL'} |")
            log(rows[-1])
        verdicts[corruption] = passed
    return rows, verdicts


# ---------------------------------------------------------------------------------------------------------------
# 3. Models


def small_cnn() -> torch.nn.Module:
    """Two conv blocks and a two-layer head for 28 x 28 x 3 inputs: fast enough to score many corrupted copies."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def fashion_mnist_model(models_dir: Path, log) -> torch.nn.Module:
    """The small CNN trained on Fashion-MNIST's training split (3 epochs, Adam, seed 0), cached in models_dir."""
    from ellbench.data import open_dataset

    path = models_dir / "fashion-mnist-small-cnn-seed0.pt"
    model = small_cnn()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    log(f"training the small CNN on Fashion-MNIST -> {path}")
    train = open_dataset("fashion-mnist", "train")
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(order), 128):
            images, labels = train.get_batch(order[first:first + 128])
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def digits_model(models_dir: Path, log) -> torch.nn.Module:
    """ellbench's deit_micro_patch4_32 trained on digits as `ellbench train ... --dataset digits --epochs 15` does."""
    from ellbench.models.loading import load_for_eval
    from ellbench.train import TrainConfig, checkpoint_path, train

    config = TrainConfig(model="deit_micro_patch4_32", dataset="digits", epochs=15, batch_size=64, lr=1e-3,
                         weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.0, augment="none", seed=0,
                         limit=None)
    log("training (or reusing) deit_micro_patch4_32 on digits")
    train(config, models_dir / "checkpoints", progress=False)  # reuses a finished checkpoint
    return load_for_eval("deit_micro_patch4_32", str(checkpoint_path(models_dir / "checkpoints", config))).module


@torch.no_grad()
def correct(model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    predictions = torch.cat([model(images[i:i + 512]).argmax(1) for i in range(0, len(images), 512)])
    return (predictions.numpy() == labels).astype(np.int8)


def passes_model_bar(ci) -> bool:
    """Issue 21's model-level bar: |difference| <= 1 point, or a CI that includes 0 and is at most 3 points wide."""
    return abs(ci.diff) <= 0.01 or (ci.low <= 0 <= ci.high and ci.high - ci.low <= 0.03)


def model_table(reference: Reference, models: dict, corruptions, log,
                yardstick_sets=()) -> tuple[list[str], dict, list[str]]:
    """Rows, {data set: {corruption: passed}}, and the yardstick rows: on the data sets in `yardstick_sets`,
    imagecorruptions with seed 1 against seed 0 under the same bar (stochastic corruptions), which shows how often
    two draws of the reference itself fail it on that many images."""
    rows = ["| data set (model, test images) | corruption | severity | imagecorruptions acc | torch acc | "
            "difference (points) | paired 95% CI | bar |", "|---|---|---|---|---|---|---|---|"]
    yardstick = ["| data set (model, test images) | corruption | severity | seed 0 acc | seed 1 acc | "
                 "difference (points) | paired 95% CI | bar |", "|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for label, (model, pixels, labels) in models.items():
        verdicts[label] = dict.fromkeys(corruptions, True)
        clean = correct(model, pixels, labels).mean()
        rows.append(f"| {label} | clean | - | {clean:.4f} | {clean:.4f} | | | |")
        for corruption in corruptions:
            pending = {s: reference.submit(pixels, corruption, s, 0) for s in SEVERITIES}
            again = {}
            if any(label.startswith(name) for name in yardstick_sets) and corruption in STOCHASTIC:
                again = {s: reference.submit(pixels, corruption, s, 1) for s in SEVERITIES}
            for severity in SEVERITIES:
                theirs = correct(model, pending[severity](), labels)
                mine = correct(model, ours(pixels, corruption, severity, 0), labels)
                ci = paired_bootstrap_ci(mine, theirs, seed=0)
                ok = passes_model_bar(ci)
                verdicts[label][corruption] &= ok
                rows.append(f"| {label} | {corruption} | {severity} | {theirs.mean():.4f} | {mine.mean():.4f} | "
                            f"{100 * ci.diff:+.2f} | [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] | "
                            f"{'pass' if ok else 'FAIL'} |")
                log(rows[-1])
                if again:
                    other = correct(model, again[severity](), labels)
                    ci = paired_bootstrap_ci(other, theirs, seed=0)
                    yardstick.append(f"| {label} | {corruption} | {severity} | {theirs.mean():.4f} | "
                                     f"{other.mean():.4f} | {100 * ci.diff:+.2f} | [{100 * ci.low:+.2f}, "
                                     f"{100 * ci.high:+.2f}] | {'pass' if passes_model_bar(ci) else 'FAIL'} |")
                    log("yardstick " + yardstick[-1])
    return rows, verdicts, yardstick if len(yardstick) > 2 else []


# ---------------------------------------------------------------------------------------------------------------


def environment() -> str:
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in
                         ("torch", "numpy", "scipy", "scikit-image", "pillow", "opencv-python", "imagecorruptions")
                         if _installed(name))
    return (f"{versions}; Python {platform.python_version()}; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}; torch backend "
            f"{torch_backend.TORCH_BACKEND_VERSION}")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=64, help="photographs for the pixel table (>= 64)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--yardstick-photos", type=int, default=16,
                        help="photographs for imagecorruptions against itself with another seed")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per photograph for the statistics")
    parser.add_argument("--stat-photos", type=int, default=8)
    parser.add_argument("--glass-stat-photos", type=int, default=4, help="glass_blur costs ~0.5 s a call")
    parser.add_argument("--fmnist-images", type=int, default=4000, help="Fashion-MNIST test images (of 10,000)")
    parser.add_argument("--fashion-mnist", action=argparse.BooleanOptionalAction, default=True,
                        help="score the small CNN on the Fashion-MNIST test split")
    parser.add_argument("--digits", action=argparse.BooleanOptionalAction, default=True,
                        help="also score deit_micro on the digits test split")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/ctorch-models"))
    parser.add_argument("--yardstick-sets", default="digits",
                        help="model data sets (comma-separated name prefixes) on which imagecorruptions is also "
                             "scored against itself with another seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--cache", type=Path, default=None, help="folder for imagecorruptions' outputs")
    parser.add_argument("--sections", default="pixels,statistics,models")
    parser.add_argument("--corruptions", default=",".join(ALL_CORRUPTIONS))
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    corruptions = [c for c in args.corruptions.split(",") if c]
    if unknown := sorted(set(corruptions) - set(ALL_CORRUPTIONS)):
        parser.error(f"unknown corruptions: {', '.join(unknown)}")
    started = time.perf_counter()
    report = ["command: `" + " ".join(["python", *sys.argv]) + "`", "", "environment: " + environment(),
              f"load average at start: {os.getloadavg()[0]:.2f}", ""]

    def log(line: str) -> None:
        print(line, flush=True)

    log("\n".join(report))
    photos = sample_photographs(args.photos, args.size)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    verdicts = {}
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        reference = Reference(pool, args.cache, chunk=8)
        if "pixels" in sections:
            log(f"\n## 1. Pixels: {args.photos} photographs at {args.size} px, MAD in 8-bit levels, mean SSIM\n")
            rows, verdicts["pixels"] = pixel_table(reference, photos, args.yardstick_photos, corruptions, log)
            report += ["## 1. Pixels", "", *rows, ""]
        if "statistics" in sections:
            log(f"\n## 2. Statistics over {args.seeds} seeds\n")
            rows, verdicts["statistics"] = statistics_table(reference, photos[:args.stat_photos], args.seeds,
                                                            args.glass_stat_photos, corruptions, log)
            report += ["## 2. Statistics over seeds", "", *rows, ""]
        if "models" in sections:
            from ellbench.data import open_dataset

            models = {}
            if args.fashion_mnist:
                fmnist = open_dataset("fashion-mnist", "test", limit=args.fmnist_images)
                images, labels = fmnist.get_batch(torch.arange(len(fmnist)))
                models[f"fashion-mnist (small CNN, {len(fmnist)})"] = (
                    fashion_mnist_model(args.models_dir, log), torch_backend.to_uint8_hwc(images), labels.numpy())
            if args.digits:
                digits = open_dataset("digits", "test")
                images, labels = digits.get_batch(torch.arange(len(digits)))
                models[f"digits (deit_micro_patch4_32, {len(digits)})"] = (
                    digits_model(args.models_dir, log), torch_backend.to_uint8_hwc(images), labels.numpy())
            log("\n## 3. Models\n")
            rows, by_set, yardstick = model_table(reference, models, corruptions, log,
                                                  [name for name in args.yardstick_sets.split(",") if name])
            verdicts.update({f"models: {label}": v for label, v in by_set.items()})
            report += ["## 3. Models", "", *rows, ""]
            if yardstick:
                report += ["### imagecorruptions against itself (seed 1 vs seed 0), same bar", "", *yardstick, ""]

    columns = [k for k in ("pixels", "statistics") if k in verdicts] + [k for k in verdicts if k.startswith("models")]
    summary = ["## Summary", "", "| corruption | kind | " + " | ".join(columns) + " | verdict |",
               "|---|---|" + "---|" * len(columns) + "---|"]
    failing = []
    for corruption in corruptions:
        cells = [("pass" if verdicts[k][corruption] else "FAIL") if corruption in verdicts[k] else "-"
                 for k in columns]
        ok = "FAIL" not in cells
        failing += [] if ok else [corruption]
        kind = "stochastic" if corruption in STOCHASTIC else "deterministic"
        summary.append(f"| {corruption} | {kind} | {' | '.join(cells)} | {'pass' if ok else 'FAIL'} |")
    summary += ["", f"failing: {', '.join(failing) or 'none'}",
                f"run time {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}"]
    log("\n" + "\n".join(summary))
    report += summary
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
