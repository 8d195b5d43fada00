"""The runner's loading: worker processes never change a batch or an outcome; errors, defaults, pooled workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from ellbench import runner
from ellbench.corruptions.images import CorruptedDataset
from ellbench.data import open_dataset
from ellbench.data.folders import ImageFolderDataset
from ellbench.errors import EllbenchError
from ellbench.store import Store

PHOTOS = (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """<root>/<class>/<file>: 7 real photographs of assorted sizes (crops of scikit-image's samples) in 2 classes."""
    root = tmp_path_factory.mktemp("photos")
    for k in range(7):
        pixels = PHOTOS[k % len(PHOTOS)]()
        height, width = 80 + 17 * k, 120 - 9 * k
        crop = np.ascontiguousarray(pixels[5 * k:5 * k + height, 3 * k:3 * k + width])
        path = root / ("a" if k < 4 else "b") / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(path, quality=85)
    return root


def image_sums(batch: runner.Batch) -> list[dict]:
    """An evaluation whose rows are functions of the batch's exact pixels: a per-example float64 sum and a hash."""
    flat = batch.images.detach().cpu().double().flatten(1)  # [B, C*H*W]
    return runner.outcome_rows(batch.indices, batch.labels, batch.labels, pixel_sum=flat.sum(1),
                               pixel_hash=[hash(row.numpy().tobytes()) for row in flat])


def stored_rows(tmp_path: Path, dataset, workers: int, name: str, batch_size: int = 3):
    store = Store(tmp_path / f"{name}-{workers}.sqlite")
    key = runner.job_key(model="none", checkpoint="none", data=dataset.fingerprint, task="clean",
                         settings={"batch_size": batch_size}, seed=0)
    spec = runner.JobSpec(key=key, dataset=dataset, evaluate=image_sums, batch_size=batch_size, loader_workers=workers)
    job = runner.run(store, spec, progress=False)
    assert job["provenance"]["loader_workers"] == workers
    return store.outcomes(job["id"]).sort_values("idx").reset_index(drop=True)


def loaded_batches(dataset, batches, workers, batch_size=3):
    return [(b.number, b.indices, b.images, b.labels)
            for b in runner.load_batches(dataset, batches, batch_size, loader_workers=workers)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (n1, i1, x1, y1), (n2, i2, x2, y2) in zip(first, second, strict=True):
        assert n1 == n2 and torch.equal(i1, i2) and torch.equal(y1, y2)
        assert x1.dtype == x2.dtype == torch.float32 and torch.equal(x1, x2)  # bit for bit


def test_folder_batches_and_rows_are_identical_for_0_and_2_workers(photo_folder, tmp_path, one_thread):
    dataset = ImageFolderDataset(photo_folder)
    batches = [2, 0, 1]  # any order, e.g. what a resumed or sharded run has left to do
    assert_same_batches(loaded_batches(dataset, batches, 0), loaded_batches(dataset, batches, 2))
    by_hand = [dataset[i] for i in (6, 0, 1, 2)]  # the data set's own items: batch 2 is [6], batch 0 is [0, 1, 2]
    loaded = loaded_batches(dataset, [2, 0], 2)
    assert torch.equal(loaded[0][2][0], by_hand[0][0]) and torch.equal(loaded[1][2][1], by_hand[2][0])
    rows0, rows2 = stored_rows(tmp_path, dataset, 0, "folder"), stored_rows(tmp_path, dataset, 2, "folder")
    assert len(rows0) == 7 and rows0.equals(rows2)


def test_built_in_and_corrupted_sets_give_identical_rows_for_0_and_2_workers(tmp_path, one_thread):
    digits = open_dataset("digits", limit=8)
    lazy = CorruptedDataset(digits, "shot_noise", 2, seed=3)
    for name, dataset in (("digits", digits), ("corrupted", lazy)):
        assert_same_batches(loaded_batches(dataset, [0, 1, 2], 0), loaded_batches(dataset, [0, 1, 2], 2))
        rows0, rows2 = stored_rows(tmp_path, dataset, 0, name), stored_rows(tmp_path, dataset, 2, name)
        assert len(rows0) == 8 and rows0.equals(rows2)
    images, _ = lazy.get_batch(torch.arange(3, 6))
    assert torch.equal(loaded_batches(lazy, [1], 2)[0][2], images)  # batch 1 = examples 3..5, as corrupted in here


def test_generated_imagenet_c_gives_identical_rows_for_0_and_2_workers(photo_folder, tmp_path, one_thread):
    from ellbench.corruptions.imagenet_c import GeneratedImageNetC

    generated = GeneratedImageNetC(ImageFolderDataset(photo_folder), "contrast", 2, cache_dir=tmp_path / "cache",
                                   workers=1)
    assert_same_batches(loaded_batches(generated, [0, 1, 2], 0), loaded_batches(generated, [0, 1, 2], 2))
    assert stored_rows(tmp_path, generated, 0, "c").equals(stored_rows(tmp_path, generated, 2, "c"))


def test_a_bad_image_read_in_a_worker_is_the_same_one_line_error(photo_folder, tmp_path):
    broken = tmp_path / "broken"
    for path in sorted(photo_folder.glob("*/*.jpg")):
        target = broken / path.relative_to(photo_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (broken / "b" / "5.jpg").write_bytes(b"not a jpeg")
    dataset = ImageFolderDataset(broken)
    messages = []
    for workers in (0, 2):
        with pytest.raises(EllbenchError) as caught:
            loaded_batches(dataset, [0, 1, 2], workers)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "5.jpg" in messages[0] and "\n" not in messages[0]


def test_loading_leaves_the_global_random_state_alone():
    digits = open_dataset("digits", limit=6)
    before = torch.random.get_rng_state()
    loaded_batches(digits, [0, 1], 0)
    loaded_batches(digits, [0, 1], 2)
    assert torch.equal(before, torch.random.get_rng_state())


def test_a_pool_keeps_its_worker_processes_for_the_next_job(photo_folder):
    dataset = ImageFolderDataset(photo_folder)
    with runner.LoaderPool() as pool:
        first = list(runner.load_batches(dataset, [0, 1], 3, loader_workers=2, loaders=pool))
        (_, loader, _), = pool._loaders.values()
        workers = list(loader._iterator._workers)
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
        second = list(runner.load_batches(dataset, [1, 2], 3, loader_workers=2, loaders=pool))
        assert loader._iterator._workers == workers and all(w.is_alive() for w in workers)  # the same processes
        assert torch.equal(first[1].images, second[0].images)
    for worker in workers:
        worker.join(timeout=10)
    assert not any(w.is_alive() for w in workers)  # closing the pool stopped them


def test_default_workers_follow_the_data_and_the_device(photo_folder, monkeypatch):
    monkeypatch.setattr(runner, "available_cores", lambda: 12)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    digits, folder = open_dataset("digits", limit=4), ImageFolderDataset(photo_folder)
    assert runner.default_loader_workers(digits, "cuda") == 0  # in memory: a batch is a tensor slice
    assert runner.default_loader_workers(CorruptedDataset(digits, "fog", 1, precompute=True), "cpu") == 0
    assert runner.default_loader_workers(CorruptedDataset(digits, "fog", 1), "cpu") == 6  # corrupted on the fly
    assert runner.default_loader_workers(folder, "cpu") == 6  # the model needs the other half
    assert runner.default_loader_workers(folder, "cuda:0") == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the machine's cores
    assert runner.default_loader_workers(folder, "cuda:1") == 3
    monkeypatch.setattr(runner, "available_cores", lambda: 128)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert runner.default_loader_workers(folder, "cuda") == runner.MAX_DEFAULT_WORKERS


def test_the_runner_uses_the_default_when_no_worker_count_is_given(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "available_cores", lambda: 4)
    dataset = ImageFolderDataset(photo_folder)
    key = runner.job_key(model="none", checkpoint="none", data=dataset.fingerprint, task="clean", settings={}, seed=0)
    job = runner.run(Store(tmp_path / "r.sqlite"), runner.JobSpec(key=key, dataset=dataset, evaluate=image_sums,
                                                                  batch_size=4), progress=False)
    assert job["provenance"]["loader_workers"] == 2 and job["summary"]["n"] == 7


@pytest.mark.cuda
def test_pinned_non_blocking_copies_to_the_gpu_equal_the_cpu_batches(photo_folder):
    dataset = ImageFolderDataset(photo_folder)
    on_cpu = loaded_batches(dataset, [0, 1, 2], 0)
    for workers in (0, 2):
        on_gpu = list(runner.load_batches(dataset, [0, 1, 2], 3, device="cuda", loader_workers=workers))
        assert all(b.images.is_cuda and b.labels.is_cuda for b in on_gpu)
        assert_same_batches(on_cpu, [(b.number, b.indices, b.images.cpu(), b.labels.cpu()) for b in on_gpu])
