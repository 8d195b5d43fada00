"""Corruptions: compatibility layer, every corruption, determinism, generated and on-disk ImageNet-C, mCE, suites."""

import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.filters
import torch
import torchvision.transforms as T
from PIL import Image

from ellbench.corruptions import imagenet_c as imc
from ellbench.corruptions import images as img
from ellbench.corruptions import mce, names
from ellbench.corruptions import suite as suites
from ellbench.errors import EllbenchError
from ellbench.tasks import corruption as task

# The 15 AlexNet mean errors as published (ecosystem_facts.md 4.2 / augmix ALEXNET_ERR), typed here by hand.
PUBLISHED_ALEXNET = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
WNIDS = ("n01440764", "n01443537")  # ImageNet-1k classes 0 and 1


def photo(size: int = 64) -> np.ndarray:
    """A real photograph (scikit-image's coffee) cut to size x size, uint8 [H, W, 3]."""
    image = Image.fromarray(skimage.data.coffee()).resize((size * 3 // 2, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image)[:, :size])


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    """val/<wnid>/*.JPEG with 3 real photographs of various sizes (ImageNet validation layout)."""
    root = tmp_path_factory.mktemp("clean")
    for k, (name, wnid) in enumerate((("astronaut", WNIDS[0]), ("chelsea", WNIDS[1]), ("rocket", WNIDS[1]))):
        (root / wnid).mkdir(exist_ok=True)
        Image.fromarray(getattr(skimage.data, name)()).save(root / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", quality=90)
    return root


def test_compat_layer_mends_imagecorruptions_without_touching_the_environment():
    import imagecorruptions.corruptions as implementation
    import numpy

    assert "pkg_resources" not in sys.modules  # the import-time stand-in is gone again
    assert implementation.np.float_ is np.float64 and not hasattr(numpy, "float_")  # numpy itself unchanged
    image = np.random.default_rng(0).random((40, 40, 3))
    assert np.array_equal(implementation.gaussian(image, sigma=2, multichannel=True),
                          skimage.filters.gaussian(image, sigma=2, channel_axis=-1))
    assert Path(implementation.resource_filename(implementation.__name__, "./frost/frost1.png")).is_file()


@pytest.mark.parametrize("corruption", names.ALL_CORRUPTIONS)
def test_every_corruption_runs_at_every_severity_and_changes_the_image(corruption):
    image = photo(48 if corruption == "glass_blur" else 64)
    for severity in names.SEVERITIES:
        out, upsampled = img.corrupt_image(image, corruption, severity, seed=3)
        assert out.dtype == np.uint8 and out.shape == image.shape and not upsampled
        assert np.abs(out.astype(int) - image).mean() > 0.5, (corruption, severity)
        assert np.array_equal(out, img.corrupt_image(image, corruption, severity, seed=3)[0])


@pytest.mark.parametrize("corruption", names.ALL_CORRUPTIONS)
def test_every_corruption_generates_an_imagenet_c_file_from_a_folder_image(clean_folder, corruption):
    source = sorted(clean_folder.glob("*/*.JPEG"))[1]
    encoded, upsampled = imc.make_imagenet_c_image(source, imc.GenerationSettings(corruption, 2))  # glass: 1 pass
    generated = np.asarray(Image.open(io.BytesIO(encoded)))
    clean_crop = np.asarray(T.CenterCrop(224)(T.Resize(256)(Image.open(source).convert("RGB"))))
    assert generated.shape == (224, 224, 3) and not upsampled
    assert np.abs(generated.astype(int) - clean_crop).mean() > 1.0


def test_gaussian_noise_equals_the_formula_with_the_derived_seed():
    image = photo()
    out, _ = img.corrupt_image(image, "gaussian_noise", 2, seed=7)
    pixels_hash = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
    words = np.frombuffer(hashlib.sha256(f"7\x00{pixels_hash}\x00gaussian_noise\x002".encode()).digest(), np.uint32)
    noise = np.random.RandomState(words).normal(size=image.shape, scale=0.12)  # severity 2: sigma 0.12
    expected = np.uint8(np.clip(image / 255.0 + noise, 0, 1) * 255)
    assert np.array_equal(out, expected)


def test_seeding_is_per_image_and_leaves_the_callers_rng_alone():
    image = photo()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = img.corrupt_image(image, "impulse_noise", 3, seed=0)[0]  # skimage's random_noise, routed to our seed
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(999)
    assert np.array_equal(img.corrupt_image(image, "impulse_noise", 3, seed=0)[0], first)
    assert not np.array_equal(img.corrupt_image(image, "impulse_noise", 3, seed=1)[0], first)
    assert not np.array_equal(img.corrupt_image(image[::-1].copy(), "impulse_noise", 3, seed=0)[0], first[::-1])


def test_bad_names_and_severities_are_one_line_errors():
    with pytest.raises(EllbenchError, match="unknown corruption"):
        img.corrupt_image(photo(), "rain", 1)
    with pytest.raises(EllbenchError, match="severity"):
        img.corrupt_image(photo(), "fog", 6)


def test_small_images_are_upsampled_corrupted_and_brought_back():
    from ellbench.data import open_dataset

    digits = open_dataset("digits", limit=4)  # 8x8 grey, replicated to 3 channels
    corrupted = img.CorruptedDataset(digits, "contrast", 5, seed=0)
    assert corrupted.upsampled and corrupted.fingerprint != digits.fingerprint
    images, labels = corrupted.get_batch(torch.arange(4))
    clean, clean_labels = digits.get_batch(torch.arange(4))
    assert images.shape == (4, 3, 8, 8) and torch.equal(labels, clean_labels)
    # contrast keeps the mean and shrinks deviations: check on the upsampled grid by hand (severity 5: c = 0.05)
    pixels = (clean[0].permute(1, 2, 0) * 255).round().byte().numpy()
    big = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)) / 255.0
    means = big.mean(axis=(0, 1), keepdims=True)
    expected_big = np.uint8(np.clip((big - means) * 0.05 + means, 0, 1) * 255)
    expected = np.asarray(Image.fromarray(expected_big).resize((8, 8), Image.Resampling.BOX)) / 255.0
    assert torch.allclose(images[0], torch.from_numpy(expected).permute(2, 0, 1).float(), atol=1e-6)
    assert torch.equal(corrupted[1][0], images[1])


def test_corruption_names_are_imagecorruptions_own_lists():
    from ellbench.corruptions.compat import imagecorruptions

    assert names.COMMON_CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("common"))
    assert names.EXTRA_CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("validation"))
    for group in ("noise", "blur", "weather", "digital"):
        assert names.CORRUPTIONS_BY_GROUP[group] == tuple(imagecorruptions.get_corruption_names(group))


def reference_generation(source: Path, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Hendrycks' recipe, written out independently: torchvision Resize(256) + CenterCrop(224), corrupt, JPEG 85."""
    cropped = T.CenterCrop(224)(T.Resize(256)(Image.open(source).convert("RGB")))
    file_hash = hashlib.sha256(source.read_bytes()).hexdigest()
    corrupted, _ = img.corrupt_image(np.asarray(cropped), corruption, severity, seed=seed, image_hash=file_hash)
    buffer = io.BytesIO()
    Image.fromarray(corrupted).save(buffer, format="JPEG", quality=85, optimize=True)
    return np.asarray(Image.open(buffer).convert("RGB"))


def pixels(dataset) -> list[np.ndarray]:
    return [(dataset[i][0].permute(1, 2, 0) * 255).round().byte().numpy() for i in range(len(dataset))]


def test_generated_imagenet_c_is_deterministic_cached_and_as_made(clean_folder, tmp_path):
    calls = []
    two_workers = imc.GeneratedImageNetC(clean_folder, "shot_noise", 3, seed=5, cache_dir=tmp_path / "a", workers=2,
                                       progress=lambda done, total: calls.append((done, total)))
    assert len(two_workers) == 3 and calls[-1] == (3, 3) and two_workers.labels == [0, 1, 1]
    generated = pixels(two_workers)
    for array, source in zip(generated, two_workers.clean.files, strict=True):
        assert array.shape == (224, 224, 3)
        assert np.array_equal(array, reference_generation(source, "shot_noise", 3, seed=5))
    one_worker = imc.GeneratedImageNetC(clean_folder, "shot_noise", 3, seed=5, cache_dir=tmp_path / "b", workers=1)
    assert all(np.array_equal(a, b) for a, b in zip(generated, pixels(one_worker), strict=True))
    assert one_worker.fingerprint == two_workers.fingerprint

    mtimes = [p.stat().st_mtime_ns for p in two_workers.files]
    cached = imc.GeneratedImageNetC(clean_folder, "shot_noise", 3, seed=5, cache_dir=tmp_path / "a", workers=2,
                                  progress=lambda done, total: pytest.fail("a cache hit generated an image"))
    assert [p.stat().st_mtime_ns for p in cached.files] == mtimes
    assert all(np.array_equal(a, b) for a, b in zip(generated, pixels(cached), strict=True))

    other_seed = imc.GeneratedImageNetC(clean_folder, "shot_noise", 3, seed=6, cache_dir=tmp_path / "a", workers=1)
    assert not np.array_equal(pixels(other_seed)[0], generated[0])
    assert other_seed.fingerprint != two_workers.fingerprint


def test_generated_imagenet_c_names_a_truncated_file_or_skips_it(clean_folder, tmp_path):
    folder = tmp_path / "val"
    (folder / WNIDS[0]).mkdir(parents=True)
    good = next(clean_folder.glob(f"{WNIDS[0]}/*.JPEG"))
    (folder / WNIDS[0] / "good.JPEG").write_bytes(good.read_bytes())
    (folder / WNIDS[0] / "torn.JPEG").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(EllbenchError, match="torn.JPEG"):
        imc.GeneratedImageNetC(folder, "contrast", 1, cache_dir=tmp_path / "cache", workers=2)
    kept = imc.GeneratedImageNetC(folder, "contrast", 1, cache_dir=tmp_path / "cache", workers=2, skip_bad_images=True)
    assert len(kept) == 1 and kept.skipped == 1


@pytest.mark.parametrize("grouped", [False, True])
def test_imagenet_c_on_disk_in_both_layouts(clean_folder, tmp_path, grouped):
    for corruption, severity in (("gaussian_noise", 3), ("defocus_blur", 1)):
        group = names.CORRUPTION_GROUPS[corruption] if grouped else ""
        for k, source in enumerate(sorted(clean_folder.glob("*/*.JPEG"))):
            target = tmp_path / group / corruption / str(severity) / source.parent.name / f"{k}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(reference_generation(source, corruption, severity, seed=0)).save(target, quality=85)
    dataset = imc.imagenet_c_folder(tmp_path, "defocus_blur", 1)
    assert len(dataset) == 3 and dataset.labels == [0, 1, 1] and dataset[0][0].shape == (3, 224, 224)
    assert dataset.name == "imagenet-c/defocus_blur/1"
    with pytest.raises(EllbenchError, match="corruptions found: defocus_blur, gaussian_noise"):
        imc.imagenet_c_folder(tmp_path, "fog", 2)


def test_shipped_alexnet_errors_match_the_published_values():
    hendrycks = mce.alexnet_baseline("hendrycks")
    assert {c: hendrycks.mean_error[c] for c in names.COMMON_CORRUPTIONS} == PUBLISHED_ALEXNET
    assert hendrycks.clean_error == 0.4348
    assert sum(PUBLISHED_ALEXNET.values()) / 15 == pytest.approx(0.788993, abs=1e-6)
    for corruption in names.COMMON_CORRUPTIONS:  # the per-severity values average to the published means
        if (corruption, 1) in hendrycks.severity_error:
            mean = sum(hendrycks.severity_error[corruption, s] for s in names.SEVERITIES) / 5
            assert mean == pytest.approx(PUBLISHED_ALEXNET[corruption], abs=1e-6)
    robustbench = mce.alexnet_baseline("robustbench")
    assert robustbench.mean_error["gaussian_noise"] == 0.8816 and robustbench.clean_error == 0.4376
    assert robustbench.severity_error["gaussian_noise", 1] == pytest.approx(1 - 0.311)


def test_mce_and_relative_mce_equal_a_hand_computed_example():
    # Every corruption at every severity has error 0.5, except gaussian_noise: 0.6, 0.7, 0.8, 0.9, 1.0 (mean 0.8).
    errors = {(c, s): 0.5 for c in names.COMMON_CORRUPTIONS for s in names.SEVERITIES}
    errors.update({("gaussian_noise", s): 0.5 + 0.1 * s for s in names.SEVERITIES})
    summary = mce.summarize_corruptions(errors, clean_error=0.25)
    assert summary["ce"]["gaussian_noise"] == pytest.approx(0.8 / 0.886428)  # = 0.902499...
    assert summary["ce"]["gaussian_noise"] == pytest.approx(0.9024986, abs=1e-6)
    expected_mce = (0.8 / 0.886428 + sum(0.5 / e for c, e in PUBLISHED_ALEXNET.items() if c != "gaussian_noise")) / 15
    assert summary["mce"] == pytest.approx(expected_mce) and summary["mce_complete"]
    relative = ((0.8 - 0.25) / (0.886428 - 0.4348)
                + sum((0.5 - 0.25) / (e - 0.4348) for c, e in PUBLISHED_ALEXNET.items() if c != "gaussian_noise")) / 15
    assert summary["relative_mce"] == pytest.approx(relative)
    assert summary["relative_ce"]["brightness"] == pytest.approx(0.25 / (0.564592 - 0.4348))  # = 1.926159...
    assert summary["baseline"]["name"] == "hendrycks" and summary["baseline"]["clean_error"] == 0.4348
    assert summary["mean_error"] == pytest.approx((0.5 * 70 + 4.0) / 75)


def test_ce_over_a_subset_of_severities_and_other_baselines():
    errors = {("gaussian_noise", 1): 0.5, ("gaussian_noise", 3): 0.6, ("gaussian_noise", 5): 0.7,
              ("jpeg_compression", 1): 0.4, ("speckle_noise", 1): 0.3}
    summary = mce.summarize_corruptions(errors)
    # AlexNet per severity from hendrycks/robustness's table, typed here by hand
    assert summary["ce"] == {"gaussian_noise": pytest.approx(0.6 / ((0.69528 + 0.93554 + 0.99452) / 3)),
                             "jpeg_compression": pytest.approx(0.4 / 0.51002),
                             "speckle_noise": pytest.approx(0.3 / 0.66192)}
    assert summary["ce_unavailable"] == {}
    assert not summary["mce_complete"] and summary["mce_corruptions"] == ["gaussian_noise", "jpeg_compression"]
    robust_partial = mce.summarize_corruptions(errors, baseline="robustbench")  # RobustBench has no extra corruptions
    assert set(robust_partial["ce_unavailable"]) == {"speckle_noise"}
    full_extra = {("spatter", s): 0.5 for s in names.SEVERITIES}
    assert mce.summarize_corruptions(full_extra)["extra_mce"] == pytest.approx(0.5 / 0.717512)
    robust = mce.summarize_corruptions({("fog", s): 0.5 for s in names.SEVERITIES}, baseline="robustbench")
    assert robust["mce"] == pytest.approx(0.5 / 0.8236) and robust["baseline"]["name"] == "robustbench"
    with pytest.raises(EllbenchError, match="unknown AlexNet baseline"):
        mce.summarize_corruptions(errors, baseline="vgg")


def test_shipped_suites(tmp_path):
    full = suites.load_suite("imagenet-c")
    assert full.corruptions == names.COMMON_CORRUPTIONS and len(full.entries()) == 75 and full.baseline == "hendrycks"
    extra = suites.load_suite("imagenet-c-extra")
    assert extra.corruptions == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    quick = suites.load_suite("quick")
    assert quick.severities == (1, 3, 5) and {names.CORRUPTION_GROUPS[c] for c in quick.corruptions} == {
        "noise", "blur", "weather", "digital"}
    assert mce.summarize_corruptions({e: 0.5 for e in quick.entries()})["ce_unavailable"] == {}
    bad = tmp_path / "bad.toml"
    bad.write_text('severities = [1]\ncorruptions = ["rain"]\n')
    with pytest.raises(EllbenchError, match="unknown corruption"):
        suites.load_suite(str(bad))
    with pytest.raises(EllbenchError, match="unknown corruption suite 'nonexistent'; available: imagenet-c"):
        suites.load_suite("nonexistent")


class CountingModel(torch.nn.Module):
    """A tiny fixed classifier (pooled pixels -> linear) that counts the images it has seen."""

    def __init__(self, num_classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                        torch.nn.Linear(48, num_classes))
        self.seen = 0

    def forward(self, images):
        self.seen += len(images)
        return self.head(images)


def loaded(model):
    from ellbench.models.loading import LoadedModel

    return LoadedModel(name="tiny", module=model.eval(), checkpoint_id="random-init:seed=0", device="cpu")


def test_suite_run_in_memory_is_stored_and_reused(tmp_path):
    from ellbench.data import open_dataset
    from ellbench.store import Store

    digits, model, store = open_dataset("digits", limit=6), CountingModel(10), Store(tmp_path / "results.sqlite")
    suite = suites.load_suite("quick")
    summary = task.run_corruption_suite(store, loaded(model), suite, clean=digits, batch_size=4, progress=False)
    images, labels = digits.get_batch(torch.arange(6))
    for entry in summary["entries"]:
        corrupted = img.corrupt_tensor(images, entry["corruption"], entry["severity"], seed=0)[0]
        expected_error = 1 - (model.head(corrupted).argmax(1) == labels).float().mean().item()
        assert entry["error"] == pytest.approx(expected_error) and entry["upsampled"]
    assert len(summary["entries"]) == 12 and summary["upsampled"] and summary["mce"] is None  # not ImageNet
    seen = model.seen
    assert task.run_corruption_suite(store, loaded(model), suite, clean=digits, batch_size=4, progress=False) == summary
    assert model.seen == seen  # every job came from the store
    shared = task.corrupted_datasets(suite, clean=digits, precompute=True)  # built once, shared between models
    for corruption, severity in suite.entries():  # the same images as corrupting lazily in this process
        lazy = img.CorruptedDataset(digits, corruption, severity)
        assert torch.equal(shared[corruption, severity].get_batch(torch.arange(6))[0],
                           lazy.get_batch(torch.arange(6))[0])
        assert shared[corruption, severity].fingerprint == lazy.fingerprint
    fresh_store = Store(tmp_path / "other.sqlite")
    again = task.run_corruption_suite(fresh_store, loaded(model), suite, clean=digits, batch_size=4, progress=False,
                                   datasets=shared)
    assert [e["error"] for e in again["entries"]] == [e["error"] for e in summary["entries"]]


def test_precomputing_over_worker_processes_gives_the_pixels_of_this_process():
    """precompute_all spreads imagecorruptions over spawned processes (chunks of 16 here, so each entry is several
    tasks); every image must be the one that corrupting lazily in this process gives, and torch entries ride along."""
    from ellbench.data import open_dataset

    digits = open_dataset("digits", limit=40)
    entries = [("shot_noise", 3, "imagecorruptions"), ("glass_blur", 1, "imagecorruptions"),
               ("contrast", 2, "imagecorruptions"), ("gaussian_noise", 2, "torch")]
    pooled = [img.CorruptedDataset(digits, c, s, seed=3, chunk_size=16, backend=b) for c, s, b in entries]
    img.precompute_all(pooled, workers=2)
    everything = torch.arange(len(digits))
    for (corruption, severity, backend), dataset in zip(entries, pooled, strict=True):
        assert dataset.in_memory and dataset.precomputed[0].dtype == torch.uint8
        lazy = img.CorruptedDataset(digits, corruption, severity, seed=3, backend=backend)
        ours, theirs = dataset.get_batch(everything), lazy.get_batch(everything)
        assert torch.equal(ours[0], theirs[0]), corruption
        assert torch.equal(ours[1], theirs[1])
    assert not torch.equal(pooled[0].get_batch(everything)[0], digits.get_batch(everything)[0])  # corrupted at all


def test_suite_run_generated_from_a_clean_folder_gives_mce(clean_folder, tmp_path):
    from ellbench.data.folders import ImageFolderDataset
    from ellbench.store import Store

    suite = suites.CorruptionSuite("two", "", ("fog", "contrast"), names.SEVERITIES)
    clean, model = ImageFolderDataset(clean_folder), CountingModel(1000)
    summary = task.run_corruption_suite(Store(tmp_path / "r.sqlite"), loaded(model), suite, clean=clean, batch_size=2,
                                     cache_dir=tmp_path / "cache", workers=1, progress=False)
    errors = {}
    for corruption, severity in suite.entries():
        data = imc.GeneratedImageNetC(clean_folder, corruption, severity, cache_dir=tmp_path / "cache", workers=1)
        predictions = model.head(torch.stack([data[i][0] for i in range(3)])).argmax(1)
        errors[corruption, severity] = 1 - (predictions == torch.tensor(data.labels)).float().mean().item()
    clean_predictions = model.head(torch.stack([clean[i][0] for i in range(3)])).argmax(1)
    clean_error = 1 - (clean_predictions == torch.tensor(clean.labels)).float().mean().item()
    expected = mce.summarize_corruptions(errors, clean_error=clean_error)
    assert summary["source"] == "generated" and summary["baseline"]["name"] == "hendrycks"
    assert summary["mce"] == pytest.approx(expected["mce"]) and summary["clean_error"] == pytest.approx(clean_error)


def test_a_bad_file_stops_the_run_keeping_stored_batches_or_is_skipped(clean_folder, tmp_path):
    from ellbench.store import Store

    folder = tmp_path / "imagenet-c" / "fog" / "1" / WNIDS[0]
    folder.mkdir(parents=True)
    sources = sorted(clean_folder.glob("*/*.JPEG"))
    for k, source in enumerate(sources):
        (folder / f"{k}.JPEG").write_bytes(source.read_bytes())
    (folder / "1.JPEG").write_bytes(sources[1].read_bytes()[:4000])
    suite, store = suites.CorruptionSuite("one", "", ("fog",), (1,)), Store(tmp_path / "r.sqlite")
    with pytest.raises(EllbenchError, match="1.JPEG"):
        task.run_corruption_suite(store, loaded(CountingModel(1000)), suite, imagenet_c=tmp_path / "imagenet-c",
                               batch_size=1, progress=False)
    (job,) = store.jobs(task="corruption")
    assert store.done_batches(job["id"]) == {0} and job["status"] != "done"
    summary = task.run_corruption_suite(store, loaded(CountingModel(1000)), suite, imagenet_c=tmp_path / "imagenet-c",
                                     batch_size=1, skip_bad_images=True, progress=False)
    assert summary["skipped_images"] == 1 and summary["entries"][0]["n"] == 2
    assert summary["clean_error"] is None and "relative_mce" not in summary
    (skipping_job,) = [j for j in store.jobs(task="corruption") if j["status"] == "done"]
    assert skipping_job["provenance"]["skipped_images"] == 1
