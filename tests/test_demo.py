"""The demo and the Fashion-MNIST study pipeline, reduced: one epoch, few images, the real command."""

from __future__ import annotations

import csv
import gzip
import struct

import numpy as np
import pytest

MODELS = ("deit_micro_patch4_32", "elliptical_micro_patch4_32")


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file in the public release's format (unsigned bytes, big-endian dimensions), gzip-compressed."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """A Fashion-MNIST folder in the release's layout: 28x28 grey images whose class sets their brightness pattern."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    for images_name, labels_name, count in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 80),
                                            ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 24)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, size=(count, 28, 28))
        for index, label in enumerate(labels):
            images[index, :, label * 2:label * 2 + 6] += 180
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return folder


def test_study_command_regenerates_its_report(run_ellbench, tmp_path, tiny_fashion_mnist):
    out = tmp_path / "study"
    result = run_ellbench("demo", "--dataset", "study", "--data-root", str(tiny_fashion_mnist), "--epochs", "1",
                          "--seeds", "0,1", "--train-limit", "40", "--limit", "12", "--attack-limit", "8",
                          "--out", str(out), "--models", ",".join(MODELS), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows_by_run = list(rows)
    # Every model once per seed, each with the study suite's 8 attack columns.
    from ellbench.attacks.suite import load_suite
    from ellbench.store import Store

    assert sorted((r["model"], r["seed"]) for r in rows) == sorted((m, s) for m in MODELS for s in ("0", "1"))
    attack_columns = [f"{e.label} ({e.protocol})" for e in load_suite("study")]
    assert len(attack_columns) == 8 and all(column in rows[0] for column in attack_columns)
    # The study's models see 28 px Fashion-MNIST as a 4 x 4 grid of 7 px patches (its preset), which the checkpoints'
    # sidecars record for evaluation.
    import json

    for model in MODELS:
        sidecar = json.loads((out / "checkpoints" / f"{model}-fashion-mnist-seed0.json").read_text())
        assert sidecar["model_kwargs"]["patch_size"] == 7 and sidecar["train"]["patch_size"] == 7
    # Each summary row's clean accuracy is its stored clean job's per-example rows, recomputed here.
    store = Store.in_folder(out)
    checkpoints = {(job["model"], job["seed"]): job["checkpoint"] for job in store.jobs(task="collapse")}
    for row in rows:
        (clean_job,) = [job for job in store.jobs(task="clean", model=row["model"], seed=int(row["seed"]))
                        if job["checkpoint"] == checkpoints[row["model"], int(row["seed"])]]
        outcomes = store.outcomes(clean_job["id"])
        assert len(outcomes) == 12
        assert float(row["clean_accuracy"]) == pytest.approx(outcomes["correct"].mean(), abs=1e-12)
        # Attacks run on the first 8 of the 12 evaluated images (--attack-limit).
        attacks = [job for job in store.jobs(task="attack", model=row["model"], seed=int(row["seed"]))
                   if job["checkpoint"] == clean_job["checkpoint"]]
        assert len(attacks) == 8 and all(len(store.outcomes(job["id"])) == 8 for job in attacks)
        # Each attack's clean predictions are the clean job's on the same images: same weights, same pixels.
        clean_pred = outcomes.set_index("idx")["pred"]
        for job in attacks:
            rows = store.outcomes(job["id"]).set_index("idx")
            assert (rows["clean_pred"] == clean_pred.loc[rows.index]).all(), job["settings"]
        # The training curve's last point (measured inside training) is the same weights' accuracy on the same test
        # images, which the clean job measured through another path.
        (curve,) = [job for job in store.jobs(task="train", model=row["model"], seed=int(row["seed"]))
                    if job["checkpoint"] == clean_job["checkpoint"]]
        assert [entry["epoch"] for entry in curve["summary"]["history"]] == [1]
        assert curve["summary"]["history"][-1]["test_accuracy"] == pytest.approx(outcomes["correct"].mean(),
                                                                                 abs=1e-12)
    store.close()

    for name in ("results.md", "results.csv", "results_seeds.csv", "results_long.csv", "comparison.md",
                 "checks.csv", "robust_vs_eps.png", "accuracy_vs_severity.png", "collapse_per_layer.png",
                 "robustness_vs_throughput.png", "training.csv", "training_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results_seeds.csv", newline="") as handle:
        seeds = list(csv.DictReader(handle))
    clean = [r for r in seeds if r["label"] == "clean"]
    assert len(clean) == len(MODELS) and all(int(float(r["n"])) == 2 for r in clean), clean
    with open(out / "training.csv", newline="") as handle:
        training = {(r["model"], r["metric"]): float(r["epoch 1"]) for r in csv.DictReader(handle)}
    assert set(training) == {(m, k) for m in MODELS for k in ("train_accuracy", "test_accuracy")}
    assert "## Training curves" in (out / "results.md").read_text()
    comparison = (out / "comparison.md").read_text()
    assert "elliptical_micro_patch4_32" in comparison and "McNemar" in comparison

    # The same command again reuses every checkpoint and job: nothing is trained or evaluated twice.
    store = Store.in_folder(out)
    jobs_before = {job["id"]: job["finished_utc"] for job in store.jobs() if job["task"] != "profile"}
    store.close()
    again = run_ellbench("demo", "--dataset", "study", "--data-root", str(tiny_fashion_mnist), "--epochs", "1",
                         "--seeds", "0,1", "--train-limit", "40", "--limit", "12", "--attack-limit", "8",
                         "--out", str(out),
                         "--models", ",".join(MODELS), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    store = Store.in_folder(out)
    jobs_after = {job["id"]: job["finished_utc"] for job in store.jobs() if job["task"] != "profile"}
    store.close()
    assert jobs_after == jobs_before

    # The study trains and evaluates over worker processes of one torch thread each (one per core here), and the
    # sidecar records the thread count. One worker instead of several gives the same bits: the same weights (so the
    # same checkpoint id) and the same summary row.
    assert all(json.loads((out / "checkpoints" / f"{m}-fashion-mnist-seed{s}.json").read_text())["train"]["threads"]
               == 1 for m in MODELS for s in (0, 1))
    alone = tmp_path / "alone"
    single = run_ellbench("demo", "--dataset", "study", "--data-root", str(tiny_fashion_mnist), "--epochs", "1",
                          "--seeds", "1", "--train-limit", "40", "--limit", "12", "--attack-limit", "8",
                          "--out", str(alone), "--models", MODELS[1], "--workers", "1", timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    with open(alone / "summary.csv", newline="") as handle:
        (alone_row,) = list(csv.DictReader(handle))
    (pooled_row,) = [r for r in rows_by_run if r["model"] == MODELS[1] and r["seed"] == "1"]
    assert {k: v for k, v in alone_row.items() if k != "throughput_img_s"} == \
        {k: v for k, v in pooled_row.items() if k != "throughput_img_s"}
    ids = {}
    for folder in (out, alone):
        store = Store.in_folder(folder)
        ids[folder] = {job["checkpoint"] for job in store.jobs(task="clean", model=MODELS[1], seed=1)}
        store.close()
    assert ids[out] == ids[alone]


def test_demo_rejects_a_missing_data_set_without_writing(run_ellbench, tmp_path):
    out = tmp_path / "demo"
    result = run_ellbench("demo", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "none"),
                          "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not (out / "ellbench.sqlite").exists()


def test_every_preset_trains_the_five_families():
    from ellbench.demo import PRESETS
    from ellbench.models.factory import family_of

    for preset in PRESETS.values():
        assert {family_of(name) for name in preset.models} == {"deit", "elliptical", "rvt", "rkde", "mom"}
