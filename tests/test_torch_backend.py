"""The torch corruption backend against imagecorruptions (through ellbench's compatibility layer), Pillow and OpenCV.

Deterministic corruptions are compared with imagecorruptions' output pixel for pixel. Stochastic ones are compared
given imagecorruptions' own random draws: NumPy's global RNG is seeded, imagecorruptions corrupts, then the same
draws are replayed in the same order and fed to the torch backend's `_apply_*` step.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from ellbench.corruptions import torch_backend as tc
from ellbench.corruptions.compat import imagecorruptions as reference
from ellbench.corruptions.images import corrupt_image
from ellbench.corruptions.names import ALL_CORRUPTIONS
from ellbench.data.photos import sample_photographs
from ellbench.errors import EllbenchError

DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate")
# computed as imagecorruptions computes them (float64 in its operation order, Pillow's integer arithmetic, or
# Pillow itself): identical to the last bit
EXACT = ("brightness", "pixelate", "jpeg_compression", "gaussian_blur", "saturate")
EXACT_GIVEN_DRAWS = ("impulse_noise", "motion_blur", "glass_blur")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return sample_photographs(16, 48)


def as_batch(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or one [H, W, 3]) -> float [B, 3, H, W] in [0, 1]."""
    pixels = pixels[None] if pixels.ndim == 3 else pixels
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255


def corrupt(pixels: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    images = as_batch(pixels)
    return tc.to_uint8_hwc(tc.corrupt_batch(images, corruption, severity, tc.image_seeds(images, corruption,
                                                                                           severity, seed=seed)))


def test_sample_photographs_are_distinct_real_images_and_reproducible():
    first, again = sample_photographs(20, 40), sample_photographs(20, 40)
    assert first.shape == (20, 40, 40, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert len({p.tobytes() for p in first}) == 20
    assert all(p.std() > 5 for p in first)  # photographs, not flat fills


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_every_corruption_runs_batched_and_returns_8_bit_images(photos, corruption):
    images = as_batch(photos[:3])
    for severity in (1, 5):
        out = tc.corrupt_batch(images, corruption, severity, tc.image_seeds(images, corruption, severity))
        assert out.shape == images.shape and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1
        assert torch.equal(out * 255, (out * 255).round())
        assert not torch.equal(out, images)


def test_results_do_not_depend_on_batch_size_order_or_threads(photos):
    images = as_batch(photos)  # 16 images
    for corruption in ALL_CORRUPTIONS:
        seeds = tc.image_seeds(images, corruption, 3)
        torch.set_num_threads(2)
        batched = tc.corrupt_batch(images, corruption, 3, seeds)
        torch.set_num_threads(1)
        single = torch.cat([tc.corrupt_batch(images[i:i + 1], corruption, 3, seeds[i:i + 1]) for i in range(16)])
        reversed_order = tc.corrupt_batch(images.flip(0), corruption, 3, seeds[::-1]).flip(0)
        assert torch.equal(batched, single), corruption
        assert torch.equal(batched, reversed_order), corruption


def test_cpu_batches_split_over_threads_give_the_op_parallel_result_and_restore_the_thread_count(photos, monkeypatch):
    """With 2 torch threads a CPU batch is cut into 2 slices, each corrupted in its own thread with 1 torch thread;
    the result must be the whole batch's under op-level parallelism, and the caller keeps its thread count."""
    import threading

    images = as_batch(photos[:5])  # an odd batch: slices of 2 and 3
    here = tc._corrupt_batch_here
    calls = []

    def recording(batch, *args):
        calls.append((len(batch), torch.get_num_threads(), threading.current_thread() is threading.main_thread()))
        return here(batch, *args)

    for corruption in ("glass_blur", "zoom_blur", "contrast", "shot_noise", "fog"):
        seeds = tc.image_seeds(images, corruption, 4)
        torch.set_num_threads(2)
        whole = here(images, corruption, 4, seeds)  # one call, every op on 2 threads
        monkeypatch.setattr(tc, "_corrupt_batch_here", recording)
        calls.clear()
        split = tc.corrupt_batch(images, corruption, 4, seeds)
        monkeypatch.setattr(tc, "_corrupt_batch_here", here)
        assert sorted(calls) == [(2, 1, False), (3, 1, False)], corruption
        assert torch.get_num_threads() == 2
        assert torch.equal(split, whole), corruption
    monkeypatch.setattr(tc, "_corrupt_batch_here", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tc.corrupt_batch(images, "contrast", 1, tc.image_seeds(images, "contrast", 1))
    assert torch.get_num_threads() == 2  # restored after a failure too


def test_odd_sizes_do_not_depend_on_batch_or_threads():
    """Non-square images whose rows are not a whole number of SIMD vectors (the tails take another code path)."""
    images = torch.nn.functional.interpolate(as_batch(sample_photographs(5, 64)), size=(45, 37), mode="area")
    images = (images * 255).round() / 255
    for corruption in ALL_CORRUPTIONS:
        seeds = tc.image_seeds(images, corruption, 2)
        torch.set_num_threads(2)
        batched = tc.corrupt_batch(images, corruption, 2, seeds)
        torch.set_num_threads(1)
        single = torch.cat([tc.corrupt_batch(images[i:i + 1], corruption, 2, seeds[i:i + 1]) for i in range(5)])
        assert torch.equal(batched, single), corruption


def test_shot_noise_samples_the_exact_poisson_distribution():
    """Inverting the tabulated CDF at evenly spaced u gives scipy's Poisson pmf to the grid's resolution."""
    stats = pytest.importorskip("scipy.stats")
    count = 100_000
    grid = ((torch.arange(count, dtype=torch.float64) + 0.5) / count).float().view(1, 1, 1, count)
    for severity in (1, 3, 5):
        photons = tc.SHOT_NOISE[severity]
        for level in (0, 1, 100, 255):
            images = torch.full((1, 1, 1, count), level / 255)
            counts = (tc._apply_shot_noise(images, severity, grid) * photons).round().long().flatten()
            frequency = torch.bincount(counts).double().numpy() / count
            pmf = stats.poisson.pmf(np.arange(len(frequency)), level / 255 * photons)
            assert np.abs(frequency - pmf).max() < 2e-5


class CorruptedPhotos(torch.utils.data.Dataset):
    def __init__(self, photos, corruption):
        self.images, self.corruption = as_batch(photos), corruption

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return tc.corrupt_tensor(self.images[index:index + 1], self.corruption, 4, seed=7)[0][0]


@pytest.mark.parametrize("corruption", ["glass_blur", "fog", "frost", "defocus_blur"])
def test_results_do_not_depend_on_worker_processes(photos, corruption):
    dataset = CorruptedPhotos(photos[:6], corruption)
    in_process = torch.cat(list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)))
    in_workers = torch.cat(list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)))
    assert torch.equal(in_process, in_workers)


def test_seeds_follow_the_image_content_seed_and_severity(photos):
    images = as_batch(photos[:2])
    duplicate = torch.cat([images[:1], images[:1]])
    out = tc.corrupt_tensor(duplicate, "gaussian_noise", 2)[0]
    assert torch.equal(out[0], out[1])  # the same pixels get the same noise, wherever they sit
    base = tc.corrupt_tensor(images, "gaussian_noise", 2, seed=0)[0]
    assert not torch.equal(base, tc.corrupt_tensor(images, "gaussian_noise", 2, seed=1)[0])
    assert not torch.equal(base, tc.corrupt_tensor(images, "gaussian_noise", 2, image_hashes=["a", "b"])[0])
    seeds = tc.image_seeds(images, "gaussian_noise", 2)
    assert seeds != tc.image_seeds(images, "gaussian_noise", 3) and seeds[0] != seeds[1]


@pytest.mark.parametrize("corruption", DETERMINISTIC)
def test_deterministic_corruptions_match_imagecorruptions_within_one_level(photos, corruption):
    for severity in (1, 2, 3, 4, 5):
        for pixels in photos[:2]:
            expected = corrupt_image(pixels, corruption, severity)[0].astype(float)
            difference = np.abs(corrupt(pixels, corruption, severity).astype(float) - expected)
            assert difference.mean() <= 1.0, (severity, difference.mean())
            assert difference.mean() <= 0.05  # in fact nearly identical: float rounding flips a level here and there
            if corruption in EXACT:
                assert difference.max() == 0, severity


def test_deterministic_corruptions_match_at_224_px():
    photo = sample_photographs(1, 224)[0]
    for corruption in DETERMINISTIC:
        expected = corrupt_image(photo, corruption, 4)[0].astype(float)
        assert np.abs(corrupt(photo, corruption, 4).astype(float) - expected).mean() <= 0.05, corruption


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_small_images_take_the_same_upsampling_path_as_imagecorruptions(corruption):
    """28 px images: Pillow-bilinear up to 32, corrupt, Pillow-box down, exactly as corrupt_image does."""
    pixels = sample_photographs(1, 28)[0]
    if corruption not in DETERMINISTIC:
        assert tc.corrupt_tensor(as_batch(pixels), corruption, 3)[1] is True
        return
    expected, upsampled = corrupt_image(pixels, corruption, 3)
    assert upsampled and tc.corrupt_tensor(as_batch(pixels), corruption, 3)[1]
    assert np.abs(corrupt(pixels, corruption, 3).astype(float) - expected).mean() <= 0.05


def test_pillow_resampling_is_reproduced_exactly():
    from PIL import Image

    rng = np.random.default_rng(0)
    for height, width, new_height, new_width in [(8, 8, 32, 32), (28, 20, 45, 32), (32, 32, 8, 8), (45, 32, 28, 20),
                                                 (224, 224, 134, 134), (224, 200, 56, 50)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        levels = torch.from_numpy(pixels).permute(2, 0, 1)
        for name, pil_filter in [("box", Image.Resampling.BOX), ("bilinear", Image.Resampling.BILINEAR)]:
            expected = np.asarray(Image.fromarray(pixels).resize((new_width, new_height), pil_filter))
            ours = tc.pil_resize(levels, (new_height, new_width), name).permute(1, 2, 0).numpy()
            assert np.array_equal(ours, expected), (name, height, width, new_height, new_width)
        expected = np.asarray(Image.fromarray(pixels).resize((new_width * 3, new_height * 2), Image.Resampling.NEAREST))
        ours = tc.pil_resize_nearest(levels, (new_height * 2, new_width * 3)).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, expected)


# --- stochastic corruptions, given imagecorruptions' own random draws


def reference_output(pixels, corruption, severity, seed):
    np.random.seed(seed)
    return reference.corrupt(pixels, severity=severity, corruption_name=corruption).astype(float)


def replayed(pixels, corruption, apply) -> np.ndarray:
    return tc.finish(corruption, apply(as_batch(pixels)))[0].permute(1, 2, 0).numpy()


def hwc_to_batch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def replay_draws(corruption, severity, shape, rng=np.random):
    """The arguments of the `_apply_*` step, drawn from NumPy's global RNG exactly as imagecorruptions draws them."""
    height, width = shape[:2]
    if corruption in ("gaussian_noise", "speckle_noise"):  # legacy normal(scale=c) is c * the standard normal
        return (hwc_to_batch(rng.standard_normal(shape)).float(),)
    if corruption == "impulse_noise":  # ellbench's shim seeds skimage's generator from the global RNG
        generator = np.random.default_rng(rng.randint(2**31 - 1))
        flipped = generator.random(shape) <= tc.IMPULSE_NOISE[severity]
        return hwc_to_batch(flipped), hwc_to_batch(generator.random(shape) <= 0.5)
    if corruption == "motion_blur":
        return ([rng.uniform(-45, 45)],)
    if corruption == "snow":
        mean, std = tc.SNOW[severity][:2]
        field = torch.from_numpy(rng.normal(size=(height, width), loc=mean, scale=std))[None].float()
        return field, [rng.uniform(-135, -45)]
    if corruption == "frost":
        index = rng.randint(5)
        frost_h, frost_w = tc._frost_picture(index, height, width).shape[-2:]
        return ([(index, rng.randint(0, frost_h - height), rng.randint(0, frost_w - width))],)
    if corruption == "fog":  # legacy uniform(-w, w) is -w + 2w * random_sample(), one (square, diamond, diamond) a step
        sizes = tc._plasma_sizes(1 << (max(height, width) - 1).bit_length())
        return ([torch.from_numpy(np.stack([rng.random_sample((n, n)) for _ in range(3)]))[None] for n in sizes],)
    if corruption == "elastic_transform":
        reach = height * 0.005
        fields = [rng.uniform(-reach, reach, size=(height, width)) for _ in range(2)]
        return (torch.from_numpy(np.stack(fields))[None],)
    if corruption == "spatter":
        mean, std = tc.SPATTER[severity][:2]
        return (torch.from_numpy(rng.normal(size=(height, width), loc=mean, scale=std))[None].float(),)
    if corruption == "glass_blur":  # one (dx, dy) per interior pixel, rows then columns, both descending
        _, reach, rounds = tc.GLASS_BLUR[severity]
        offsets = np.zeros((1, rounds, 2, height - 2 * reach, width - 2 * reach), dtype=np.int64)
        for r in range(rounds):
            for h in range(height - reach, reach, -1):
                for w in range(width - reach, reach, -1):
                    dx, dy = rng.randint(-reach, reach, size=(2,))
                    offsets[0, r, :, h - reach - 1, w - reach - 1] = dy, dx
        return (torch.from_numpy(offsets),)
    raise AssertionError(corruption)


APPLY = {"gaussian_noise": tc._apply_gaussian_noise, "speckle_noise": tc._apply_speckle_noise,
         "impulse_noise": lambda x, severity, flipped, salted: tc._apply_impulse_noise(x, flipped, salted),
         "motion_blur": tc._apply_motion_blur, "snow": tc._apply_snow, "frost": tc._apply_frost, "fog": tc._apply_fog,
         "elastic_transform": tc._apply_elastic, "spatter": tc._apply_spatter, "glass_blur": tc._apply_glass_blur}


@pytest.mark.parametrize("corruption", sorted(APPLY))
def test_stochastic_corruptions_reproduce_imagecorruptions_given_its_draws(photos, corruption):
    for severity in (1, 3, 5):
        for k, pixels in enumerate(photos[:2]):
            expected = reference_output(pixels, corruption, severity, seed=100 + k)
            np.random.seed(100 + k)
            draws = replay_draws(corruption, severity, pixels.shape)
            ours = replayed(pixels, corruption, lambda x, s=severity, d=draws: APPLY[corruption](x, s, *d))
            difference = np.abs(ours - expected)
            if corruption == "spatter" and severity <= 3:
                # water: OpenCV's chamfer distance transform vs our exact one; the texture is a few levels off
                assert difference.mean() <= 0.5 and (difference > 1).mean() < 0.05
            elif corruption in EXACT_GIVEN_DRAWS:
                assert difference.max() == 0, severity
            else:
                assert difference.max() <= 1 and difference.mean() <= 0.05, (severity, difference.mean())


def test_glass_blur_copies_rather_than_swaps():
    """imagecorruptions' tuple swap on NumPy views copies; one hand-checked chain on a 6 x 6 image."""
    pixels = np.arange(36, dtype=np.int64).reshape(1, 6, 6)
    offsets = torch.zeros(1, 2, 4, 4, dtype=torch.int64)  # reach 1: pixels (2..5, 2..5), offsets in {-1, 0}
    offsets[0, :, 3, 3] = torch.tensor([-1, -1])  # (5, 5) <- (4, 4), visited later: takes its original value 28
    offsets[0, :, 2, 2] = torch.tensor([-1, 0])  # (4, 4) <- (3, 4) = 22
    sources = tc._glass_sources(offsets, 1, 6, 6)[0]
    result = torch.from_numpy(pixels).flatten()[sources].view(6, 6)
    assert result[5, 5] == 28 and result[4, 4] == 22 and result[3, 4] == 22  # a swap would move 35 to (4, 4)


def test_glass_blur_follows_chains_of_earlier_copies():
    """With reach 2 an offset of +1 points at a pixel already overwritten: its copy is followed."""
    offsets = torch.zeros(1, 2, 4, 4, dtype=torch.int64)  # 8 x 8 image, reach 2: pixels (3..6, 3..6)
    offsets[0, :, 3, 3] = torch.tensor([-2, -2])  # (6, 6) <- (4, 4), not yet visited: original 36
    offsets[0, :, 2, 2] = torch.tensor([1, 1])  # (5, 5) <- (6, 6), already holding 36
    offsets[0, :, 1, 1] = torch.tensor([1, 1])  # (4, 4) <- (5, 5), already holding 36
    sources = tc._glass_sources(offsets, 2, 8, 8)[0]
    assert sources[6 * 8 + 6] == 36 and sources[5 * 8 + 5] == 36 and sources[4 * 8 + 4] == 36


def test_frost_pictures_come_from_the_installed_package_as_opencv_reads_them():
    cv2 = pytest.importorskip("cv2")
    for index, name in enumerate(tc.FROST_FILES):
        path = tc._frost_folder() / name
        assert path.is_file()
        bgr = cv2.imread(str(path))
        size = (int(np.ceil(bgr.shape[1] * 1.1)), int(np.ceil(bgr.shape[0] * 1.1)))
        expected = cv2.resize(bgr, dsize=size, interpolation=cv2.INTER_CUBIC)[..., ::-1].astype(int)
        ours = tc._frost_picture(index, 224, 224).permute(1, 2, 0).numpy().astype(int)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= 1 and np.abs(ours - expected).mean() < 0.1


def test_bad_input_is_one_line_error():
    images = torch.rand(2, 3, 40, 40)
    with pytest.raises(EllbenchError, match="unknown corruption"):
        tc.corrupt_batch(images, "rain", 1, [0, 1])
    with pytest.raises(EllbenchError, match="severity"):
        tc.corrupt_batch(images, "fog", 6, [0, 1])
    with pytest.raises(EllbenchError, match="seeds"):
        tc.corrupt_batch(images, "fog", 1, [0])
    with pytest.raises(EllbenchError, match=r"\[B, 3, H, W\]"):
        tc.corrupt_batch(images[0], "fog", 1, [0])
    with pytest.raises(EllbenchError, match="float images"):
        tc.corrupt_batch((images * 255).to(torch.uint8), "fog", 1, [0, 1])


@pytest.mark.cuda
@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_cpu_and_cuda_agree(corruption):
    pixels = sample_photographs(4, 224)
    images = as_batch(pixels)
    for severity in (1, 3, 5):
        seeds = tc.image_seeds(images, corruption, severity)
        on_cpu = tc.corrupt_batch(images, corruption, severity, seeds)
        on_cuda = tc.corrupt_batch(images.cuda(), corruption, severity, seeds).cpu()
        difference = (on_cpu - on_cuda).abs() * 255
        assert difference.mean() <= 0.05 and (difference > 1.5).float().mean() <= 1e-3, (severity, difference.max())


# --- Selecting the backend: suites, generated ImageNet-C, the CLI, job keys and the report -------------------------


def write_suite(path, backend: str | None = None, corruptions=("contrast",), severities=(1,)):
    lines = [f"corruptions = {json.dumps(list(corruptions))}", f"severities = {json.dumps(list(severities))}"]
    if backend is not None:
        lines.append(f"backend = {json.dumps(backend)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_suite_file_chooses_the_backend_and_a_bad_value_is_a_one_line_error(tmp_path):
    from ellbench.corruptions.suite import load_suite

    assert load_suite(write_suite(tmp_path / "default.toml")).backend == "imagecorruptions"
    assert load_suite(write_suite(tmp_path / "torch.toml", "torch")).backend == "torch"
    assert load_suite("imagenet-c").backend == "imagecorruptions"  # the shipped suites keep the reference
    for bad in ("opencv", 3):
        with pytest.raises(EllbenchError, match=r"unknown backend .*; choose one of imagecorruptions, torch"):
            load_suite(write_suite(tmp_path / "bad.toml", bad))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """val/<wnid>/*.JPEG: three real photographs of different sizes (ImageNet validation layout)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("clean")
    for k, (wnid, size) in enumerate((("n01440764", 300), ("n01443537", 256), ("n01443537", 410))):
        (root / wnid).mkdir(exist_ok=True)
        Image.fromarray(sample_photographs(k + 1, size)[k]).save(root / wnid / f"val_{k}.JPEG", quality=90)
    return root


@pytest.mark.parametrize("corruption", ["contrast", "shot_noise"])
def test_generated_imagenet_c_keeps_its_recipe_with_the_torch_backend(photo_folder, tmp_path, corruption):
    """Resize 256 and centre crop 224 (torchvision, written out here), the torch backend seeded by the file's
    hash, JPEG quality 85: the cached file is exactly that; two worker processes make the same files as one."""
    import torchvision.transforms as T
    from PIL import Image

    from ellbench.corruptions.imagenet_c import GeneratedImageNetC

    generated = GeneratedImageNetC(photo_folder, corruption, 2, seed=3, cache_dir=tmp_path / "a", workers=2,
                                   backend="torch")
    assert all("-torch-1-" in str(path) for path in generated.files)
    for path, source in zip(generated.files, generated.clean.files, strict=True):
        cropped = np.array(T.CenterCrop(224)(T.Resize(256)(Image.open(source).convert("RGB"))))
        file_hash = hashlib.sha256(source.read_bytes()).hexdigest()
        images = as_batch(cropped)
        seeds = [tc.generator_seed(tc.image_seed(3, file_hash, corruption, 2))]
        buffer = io.BytesIO()
        Image.fromarray(tc.to_uint8_hwc(tc.corrupt_batch(images, corruption, 2, seeds))[0]).save(
            buffer, format="JPEG", quality=85, optimize=True)
        assert path.read_bytes() == buffer.getvalue()
    in_process = GeneratedImageNetC(photo_folder, corruption, 2, seed=3, cache_dir=tmp_path / "b", workers=1,
                                    backend="torch")
    assert [p.read_bytes() for p in in_process.files] == [p.read_bytes() for p in generated.files]
    reference_backend = GeneratedImageNetC(photo_folder, corruption, 2, seed=3, cache_dir=tmp_path / "a", workers=1)
    assert reference_backend.fingerprint != generated.fingerprint
    assert not set(reference_backend.files) & set(generated.files)


def run_corrupt(*args: str) -> dict:
    """`ellbench corrupt ... --json` in this process (the CLI's own code path)."""
    from typer.testing import CliRunner

    from ellbench.cli import app

    result = CliRunner().invoke(app, ["corrupt", "deit_micro_patch4_32", "--data", "digits", "--limit", "6",
                                      "--batch-size", "6", "--workers", "0", "--device", "cpu", "--json", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_cli_backend_flag_and_suite_key_make_separate_jobs_that_the_report_tells_apart(tmp_path):
    import pandas as pd

    from ellbench.data import open_dataset
    from ellbench.report.build import build_report
    from ellbench.store import Store
    from ellbench.tasks.inputs import load_model

    out = tmp_path / "out"
    suite = write_suite(tmp_path / "one.toml", corruptions=("shot_noise",))
    reference = run_corrupt("--suite", str(suite), "--out", str(out))
    flagged = run_corrupt("--suite", str(suite), "--out", str(out), "--corruption-backend", "torch")
    from_suite = run_corrupt("--suite", str(write_suite(tmp_path / "torch.toml", "torch", ("shot_noise",))),
                             "--out", str(out))
    assert reference["backend"] == "imagecorruptions 1.1.2" and flagged["backend"] == "torch torch-1"
    assert from_suite["entries"] == flagged["entries"]

    store = Store.in_folder(out)
    jobs = store.jobs(task="corruption")
    assert len(jobs) == 2  # the suite key reused the flag's job; the two backends are two jobs
    by_backend = {job["settings"].get("corruption_backend", "imagecorruptions"): job for job in jobs}
    torch_job, reference_job = by_backend["torch"], by_backend["imagecorruptions"]
    assert torch_job["settings"]["corruption_backend_version"] == "torch-1"
    assert "corruption_backend" not in reference_job["settings"]  # keys from before the torch backend stay valid
    assert torch_job["data"].endswith(":ic=1.1.2:backend=torch-1") and reference_job["data"].endswith(":ic=1.1.2")

    # the stored predictions are those of the model on the torch backend's images
    digits = open_dataset("digits", "test", limit=6)
    images, labels = digits.get_batch(torch.arange(6))
    outcomes = store.outcomes(torch_job["id"]).sort_values("idx")
    corrupted = tc.corrupt_tensor(images, "shot_noise", 1, seed=0)[0]
    model = load_model("deit_micro_patch4_32", dataset=digits, seed=0, device="cpu")
    with torch.no_grad():
        assert outcomes["pred"].tolist() == model.module(corrupted).argmax(1).tolist()
    assert outcomes["label"].tolist() == labels.tolist()

    report = build_report(store, tmp_path / "report", formats=("md", "csv"), reference=False)
    assert report["files"]
    long = pd.read_csv(tmp_path / "report" / "results_long.csv")
    corruption_rows = long[long["task"] == "corruption"]
    assert set(corruption_rows["corruption_backend"]) == {"imagecorruptions 1.1.2", "torch torch-1"}
    assert set(corruption_rows["label"]) == {"shot_noise s1", "shot_noise s1 [torch corruptions]"}
    text = (tmp_path / "report" / "results.md").read_text()
    assert "## Corruption backends" in text and "torch torch-1" in text
