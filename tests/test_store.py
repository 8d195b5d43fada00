"""Results store and job runner: stable keys, per-batch commits, reuse, resume after SIGKILL, concurrent writers,
provenance."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ellbench
from ellbench._version import __version__
from ellbench.data import open_dataset
from ellbench.errors import EllbenchError
from ellbench.runner import job_key
from ellbench.store import KEY_FIELDS, Store, canonical_json, job_id_for

# A stand-alone job process. Its evaluate_batch is a deterministic function of each image alone, so an example's
# outcome cannot depend on which batch or process evaluated it. It can park itself inside batch N (so the test can
# SIGKILL it mid-run at a known point) and wait for a start file (so two writers start together).
WORKER = textwrap.dedent('''
    import argparse, json, os, sys, time
    from pathlib import Path

    def make_evaluator(delay=0.0, stall_after=None, parked_file=None, calls=None):
        calls = [] if calls is None else calls

        def evaluate_batch(batch):
            indices, images, labels = batch.indices, batch.images, batch.labels
            if stall_after is not None and len(calls) == stall_after:
                Path(parked_file).write_text("parked")
                time.sleep(600)  # the test kills the process here
            calls.append(int(indices[0]))
            time.sleep(delay)
            preds = (images.sum(dim=(1, 2, 3)) * 7).floor().long() % 10
            return [{"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y),
                     "brightness": round(float(image.mean()), 6)}
                    for i, y, p, image in zip(indices.tolist(), labels.tolist(), preds.tolist(), images)]

        return evaluate_batch

    def run_job(store, key, dataset, evaluate, *, batch_size, progress=False, provenance=None):
        from ellbench.runner import JobSpec, run
        return run(store, JobSpec(key=key, dataset=dataset, evaluate=evaluate, batch_size=batch_size,
                                  provenance=provenance or {}), progress=progress)

    def key_for(task, dataset):
        from ellbench.runner import job_key
        return job_key(model="toy", checkpoint="random-init:seed=0", data=dataset.fingerprint, task=task,
                       settings={"rule": "floor(7 * sum) mod 10"}, seed=0)

    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        parser.add_argument("store"); parser.add_argument("task")
        parser.add_argument("--limit", type=int, default=60); parser.add_argument("--batch-size", type=int, default=6)
        parser.add_argument("--delay", type=float, default=0.0); parser.add_argument("--stall-after", type=int)
        parser.add_argument("--parked-file"); parser.add_argument("--ready-file"); parser.add_argument("--start-file")
        parser.add_argument("--report-prefix")
        args = parser.parse_args()
        from ellbench.data import open_dataset
        from ellbench.store import Store
        dataset = open_dataset("digits", limit=args.limit)
        if args.start_file:  # everything is imported: wait for the other writer
            Path(args.ready_file).write_text("ready")
            while not Path(args.start_file).exists():
                time.sleep(0.01)
        began = time.time()
        store = Store(args.store)
        calls = []
        evaluate = make_evaluator(args.delay, args.stall_after, args.parked_file, calls)
        job = run_job(store, key_for(args.task, dataset), dataset, evaluate, batch_size=args.batch_size,
                      progress=False)
        report = json.dumps({"evaluated": calls, "status": job["status"], "summary": job["summary"],
                             "began": began, "ended": time.time(), "rank": int(os.environ.get("RANK", "0"))})
        if args.report_prefix:  # one file per rank: ranks' stdout lines could interleave
            Path(f"{args.report_prefix}{os.environ.get('RANK', '0')}.json").write_text(report)
        else:
            print(report)
''')


@pytest.fixture
def worker(tmp_path):
    """The worker script on disk, and the same code imported here for in-process reference runs."""
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    spec = importlib.util.spec_from_file_location("ellbench_test_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.path = path
    return module


def reference_outcomes(worker, tmp_path, task: str, limit: int, batch_size: int):
    """Outcomes of an uninterrupted in-process run in its own store."""
    dataset = open_dataset("digits", limit=limit)
    store = Store(tmp_path / f"reference-{task}.sqlite")
    job = worker.run_job(store, worker.key_for(task, dataset), dataset, worker.make_evaluator(), batch_size=batch_size,
                  progress=False)
    assert job["status"] == "done"
    frame = store.outcomes(job["id"])
    store.close()
    return frame


def wait_for(condition, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker exited ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, worker, subprocess_env):
    limit, batch_size, parked_after = 60, 6, 4
    store_path, parked = tmp_path / "killed.sqlite", tmp_path / "parked"
    command = [sys.executable, str(worker.path), str(store_path), "clean", "--limit", str(limit),
               "--batch-size", str(batch_size)]
    victim = subprocess.Popen([*command, "--stall-after", str(parked_after), "--parked-file", str(parked)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        wait_for(parked.exists, 120, "the worker to reach batch 4", victim)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    # The partial state: exactly the batches evaluated before the kill, each complete, and an open job.
    with contextlib.closing(read_only(store_path)) as db:
        (job_id, status, finished, summary), = db.execute("SELECT id, status, finished_utc, summary FROM jobs")
        batches = db.execute("SELECT batch, size FROM batches ORDER BY batch").fetchall()
        indices = [i for (i,) in db.execute("SELECT idx FROM outcomes ORDER BY idx")]
        attempts = db.execute("SELECT status, ended_utc FROM attempts").fetchall()
    assert (status, finished, summary) == ("running", None, None)
    assert batches == [(b, batch_size) for b in range(parked_after)]
    assert indices == list(range(parked_after * batch_size))
    assert attempts == [("running", None)]

    # Resume in a new process (this one) with the same command's job.
    dataset = open_dataset("digits", limit=limit)
    calls = []
    store = Store(store_path)
    job = worker.run_job(store, worker.key_for("clean", dataset), dataset, worker.make_evaluator(calls=calls),
                  batch_size=batch_size, progress=False)
    # Only the missing batches ran, and the whole job is now done.
    assert calls == list(range(parked_after * batch_size, limit, batch_size))
    assert job["id"] == job_id and job["status"] == "done" and job["summary"]["batches_resumed"] == parked_after
    outcomes = store.outcomes(job_id)
    attempts = store.attempts(job_id)
    expected = reference_outcomes(worker, tmp_path, "clean", limit, batch_size)
    assert outcomes.equals(expected)
    assert list(outcomes["idx"]) == list(range(limit))
    assert job["status"] == "done" and job["summary"]["n"] == limit
    assert job["summary"]["accuracy"] == pytest.approx(expected["correct"].mean())
    # The killed attempt was never closed; the resume marks it abandoned (not done) and closes its own.
    assert [a["status"] for a in attempts] == ["abandoned", "done"]
    assert attempts[0]["ended_utc"] is None and attempts[1]["ended_utc"] is not None
    assert attempts[0]["provenance"]["pid"] == victim.pid and attempts[1]["provenance"]["pid"] == os.getpid()
    assert "worker.py" in attempts[0]["provenance"]["command"]
    assert "--stall-after 4" in attempts[0]["provenance"]["command"]
    store.close()


def test_two_processes_writing_different_jobs_lose_nothing(tmp_path, worker, subprocess_env):
    """A child process and this one write 40 one-transaction batches each into one store at the same time."""
    limit, batch_size, delay = 120, 3, 0.02
    store_path, ready, start = tmp_path / "shared.sqlite", tmp_path / "ready", tmp_path / "start"
    child = subprocess.Popen(
        [sys.executable, str(worker.path), str(store_path), "task-child", "--limit", str(limit), "--batch-size",
         str(batch_size), "--delay", str(delay), "--ready-file", str(ready), "--start-file", str(start)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        dataset = open_dataset("digits", limit=limit)
        wait_for(ready.exists, 120, "the child to be ready", child)
        start.write_text("go")
        began = time.time()
        store = Store(store_path)
        worker.run_job(store, worker.key_for("task-parent", dataset), dataset, worker.make_evaluator(delay),
                batch_size=batch_size, progress=False)
        ended = time.time()
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    report = json.loads(stdout)
    assert began < report["ended"] and report["began"] < ended, "the writers did not overlap"

    jobs = store.jobs()
    assert sorted(job["task"] for job in jobs) == ["task-child", "task-parent"]
    for job in jobs:
        assert job["status"] == "done"
        assert store.done_batches(job["id"]) == set(range(limit // batch_size))
        assert store.outcomes(job["id"]).equals(reference_outcomes(worker, tmp_path, job["task"], limit, batch_size))
    store.close()


def test_an_interrupted_run_resumes_to_the_outcomes_of_an_uninterrupted_run(tmp_path, worker):
    dataset = open_dataset("digits", limit=25)
    key = worker.key_for("clean", dataset)
    evaluate = worker.make_evaluator()
    calls = []

    def failing_in_batch_3(batch):
        calls.append(int(batch.indices[0]))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return evaluate(batch)

    store = Store(tmp_path / "store.sqlite")
    with pytest.raises(RuntimeError, match="power cut"):
        worker.run_job(store, key, dataset, failing_in_batch_3, batch_size=4, progress=False)
    job_id = job_id_for(key)
    assert store.done_batches(job_id) == {0, 1}
    assert [a["status"] for a in store.attempts(job_id)] == ["interrupted"]
    assert store.get_job(job_id)["status"] == "running"

    calls.clear()

    def counting(batch):
        calls.append(int(batch.indices[0]))
        return evaluate(batch)

    job = worker.run_job(store, key, dataset, counting, batch_size=4, progress=False)
    assert calls == [8, 12, 16, 20, 24]  # batches 2..6 only; the last batch holds one example
    assert job["status"] == "done" and job["summary"]["batches_resumed"] == 2
    assert [a["status"] for a in store.attempts(job_id)] == ["interrupted", "done"]
    assert store.outcomes(job_id).equals(reference_outcomes(worker, tmp_path, "clean", 25, 4))


def test_a_finished_job_is_reused_without_evaluating_again(tmp_path, worker):
    dataset = open_dataset("digits", limit=12)
    key = worker.key_for("clean", dataset)
    store = Store(tmp_path / "store.sqlite")
    first = worker.run_job(store, key, dataset, worker.make_evaluator(), batch_size=5, progress=False)

    def must_not_run(*batch):
        raise AssertionError("evaluate_batch called for a finished job")

    reopened = Store(tmp_path / "store.sqlite")
    again = worker.run_job(reopened, key, dataset, must_not_run, batch_size=5, progress=False)
    assert again["id"] == first["id"] and again["summary"] == first["summary"]
    assert again["finished_utc"] == first["finished_utc"]
    assert len(reopened.attempts(first["id"])) == 1
    assert len(reopened.jobs()) == 1
    # A different setting is a different job: it runs.
    other = dict(key, settings={"rule": "other"})
    other_job = worker.run_job(reopened, other, dataset, worker.make_evaluator(), batch_size=5, progress=False)
    assert other_job["id"] != first["id"]
    assert len(reopened.jobs()) == 2


def test_resuming_with_a_different_batch_size_is_refused(tmp_path, worker):
    dataset = open_dataset("digits", limit=12)
    key = worker.key_for("clean", dataset)
    store = Store(tmp_path / "store.sqlite")
    store.open_job(key, total=len(dataset), batch_size=5, provenance={})
    with pytest.raises(EllbenchError, match="batches of 5"):
        worker.run_job(store, key, dataset, worker.make_evaluator(), batch_size=4, progress=False)


def test_outcome_extras_come_back_as_columns(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    key = job_key(model="m", checkpoint="c", data="d", task="t", settings={}, seed=0)
    job = store.open_job(key, total=3, batch_size=2, provenance={})
    store.commit_batch(job["id"], 1, [{"idx": 2, "label": 1, "pred": 0, "correct": 0, "margin": -0.25}])
    store.commit_batch(job["id"], 0, [{"idx": 0, "label": 4, "pred": 4, "correct": 1, "margin": 1.5},
                                      {"idx": 1, "label": 2, "pred": 2, "correct": True, "margin": 0.5}])
    frame = store.outcomes(job["id"])
    assert frame.to_dict("records") == [
        {"idx": 0, "label": 4, "pred": 4, "correct": 1, "margin": 1.5},
        {"idx": 1, "label": 2, "pred": 2, "correct": 1, "margin": 0.5},
        {"idx": 2, "label": 1, "pred": 0, "correct": 0, "margin": -0.25},
    ]
    assert store.done_batches(job["id"]) == {0, 1}


def test_job_ids_are_stable_and_cover_every_key_field():
    key = job_key(model="deit_micro_patch4_32", checkpoint="sha256:ab", data="digits:449:0123", task="clean",
                  settings={"batch_size": 64, "eps": [1, 2]}, seed=3)
    job_id = job_id_for(key)
    assert len(job_id) == 64 and set(job_id) <= set("0123456789abcdef")
    assert job_id == hashlib.sha256(canonical_json({f: key[f] for f in KEY_FIELDS}).encode()).hexdigest()
    assert job_id_for(dict(reversed(list(key.items())))) == job_id  # field order is irrelevant
    assert job_id_for(dict(key, settings={"eps": [1, 2], "batch_size": 64})) == job_id
    assert job_id_for(dict(key, note="not a key field")) == job_id
    assert key["version"] == __version__
    changed = {"model": "x", "checkpoint": "sha256:cd", "data": "digits:10:ff", "task": "attack",
               "settings": {"batch_size": 32, "eps": [1, 2]}, "seed": 4, "version": "9.9"}
    assert set(changed) == set(KEY_FIELDS)
    ids = {job_id_for(dict(key, **{field: value})) for field, value in changed.items()}
    assert len(ids) == len(KEY_FIELDS) and job_id not in ids
    with pytest.raises(ValueError):
        job_id_for({field: key[field] for field in KEY_FIELDS if field != "seed"})


def parse_utc(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    assert moment.utcoffset() == dt.timedelta(0), text
    return moment


def test_provenance_fields_are_filled(tmp_path, worker):
    import timm

    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dataset = open_dataset("digits", limit=8)
    store = Store(tmp_path / "store.sqlite")
    job = worker.run_job(store, worker.key_for("clean", dataset), dataset, worker.make_evaluator(), batch_size=4,
                  progress=False, provenance={"note": "from the test"})
    after = dt.datetime.now(dt.UTC)
    record = job["provenance"]
    assert record["ellbench"] == __version__
    assert record["torch"] == torch.__version__
    assert record["timm"] == timm.__version__
    assert record["torchattacks"] == importlib.metadata.version("torchattacks")
    assert record["device"] == "cpu" and record["device_name"]
    assert record["threads"] == torch.get_num_threads() >= 1
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["host"] and record["pid"] == os.getpid()
    assert record["command"] == " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    assert record["note"] == "from the test"
    assert before <= parse_utc(record["recorded_utc"]) <= after
    created, finished = parse_utc(job["created_utc"]), parse_utc(job["finished_utc"])
    assert before <= created <= finished <= after
    (attempt,) = store.attempts(job["id"])
    assert attempt["status"] == "done" and attempt["provenance"] == record
    assert before <= parse_utc(attempt["started_utc"]) <= parse_utc(attempt["ended_utc"]) <= after

    repo = Path(ellbench.__file__).resolve().parents[1]
    if (repo / ".git").exists():
        # Others may commit meanwhile: the recorded commit must exist and be HEAD or one of its ancestors.
        commit = record["git_commit"]
        assert commit and len(commit) == 40
        check = subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, "HEAD"],
                               capture_output=True, check=False)
        assert check.returncode == 0, check.stderr
    else:
        assert record["git_commit"] is None


def test_a_killed_attempt_is_not_recorded_as_done_when_the_job_is_resumed(tmp_path):
    key = job_key(model="m", checkpoint="c", data="d", task="t", settings={}, seed=0)
    killed = Store(tmp_path / "store.sqlite")
    job = killed.open_job(key, total=1, batch_size=1, provenance={"run": 1})
    killed.commit_batch(job["id"], 0, [{"idx": 0, "label": 0, "pred": 0, "correct": 1}])
    # The process dies here: its attempt is never closed. A new process resumes and finishes the job.
    resumed = Store(tmp_path / "store.sqlite")
    resumed.open_job(key, total=1, batch_size=1, provenance={"run": 2})
    resumed.finish_job(job["id"], {"n": 1})
    first, second = resumed.attempts(job["id"])
    assert second["status"] == "done" and second["ended_utc"] is not None
    assert first["status"] == "abandoned" and first["provenance"] == {"run": 1}


def test_two_torchrun_processes_resume_a_job_to_the_single_process_outcomes(tmp_path, worker, subprocess_env):
    """Batches are sharded whole across ranks; only rank 0 writes; the result equals an uninterrupted run."""
    limit, batch_size = 40, 4
    dataset = open_dataset("digits", limit=limit)
    store_path = tmp_path / "store.sqlite"
    evaluate, calls = worker.make_evaluator(), []

    def fail_in_batch_3(batch):
        calls.append(int(batch.indices[0]))
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return evaluate(batch)

    with pytest.raises(RuntimeError):
        worker.run_job(Store(store_path), worker.key_for("clean", dataset), dataset, fail_in_batch_3,
                       batch_size=batch_size, progress=False)
    subprocess_env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker.path),
         str(store_path), "clean", "--limit", str(limit), "--batch-size", str(batch_size), "--report-prefix",
         str(tmp_path / "rank")],
        capture_output=True, text=True, env=subprocess_env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    assert reports[0]["rank"] == 0 and reports[1]["rank"] == 1
    # Batches 2..9 remain; rank 0 takes 2, 4, 6, 8 and rank 1 takes 3, 5, 7, 9.
    assert reports[0]["evaluated"] == [8, 16, 24, 32] and reports[1]["evaluated"] == [12, 20, 28, 36]
    assert reports[0]["status"] == reports[1]["status"] == "done"
    store = Store(store_path)
    (job,) = store.jobs()
    assert job["summary"]["batches_resumed"] == 2
    assert [a["status"] for a in store.attempts(job["id"])] == ["interrupted", "done"]  # one attempt: rank 0's
    assert store.outcomes(job["id"]).equals(reference_outcomes(worker, tmp_path, "clean", limit, batch_size))
    store.close()


def test_a_second_process_on_the_same_job_leaves_a_live_attempt_running(tmp_path):
    """Two live processes on one job (same host): neither marks the other's attempt abandoned; each closes its own."""
    import socket

    key = job_key(model="m", checkpoint="c", data="d", task="t", settings={}, seed=0)
    alive = {"pid": os.getpid(), "host": socket.gethostname()}
    first, second = Store(tmp_path / "store.sqlite"), Store(tmp_path / "store.sqlite")
    job = first.open_job(key, total=1, batch_size=1, provenance=dict(alive, run=1))
    second.open_job(key, total=1, batch_size=1, provenance=dict(alive, run=2))
    assert [a["status"] for a in first.attempts(job["id"])] == ["running", "running"]
    first.commit_batch(job["id"], 0, [{"idx": 0, "label": 0, "pred": 0, "correct": 1}])
    first.finish_job(job["id"], {"n": 1})
    assert [a["status"] for a in first.attempts(job["id"])] == ["done", "running"]
    second.finish_job(job["id"], {"n": 1})
    assert [(a["status"], a["provenance"]["run"]) for a in first.attempts(job["id"])] == [("done", 1), ("done", 2)]


def test_an_attempt_of_a_dead_process_on_this_host_is_abandoned(tmp_path):
    import socket

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = {"pid": int(finished.stdout), "host": socket.gethostname()}
    key = job_key(model="m", checkpoint="c", data="d", task="t", settings={}, seed=0)
    job = Store(tmp_path / "store.sqlite").open_job(key, total=1, batch_size=1, provenance=dead)
    resumed = Store(tmp_path / "store.sqlite")
    resumed.open_job(key, total=1, batch_size=1, provenance={"pid": os.getpid(), "host": socket.gethostname()})
    assert [a["status"] for a in resumed.attempts(job["id"])] == ["abandoned", "running"]


def test_a_damaged_store_is_noticed_before_any_write_even_when_its_jobs_look_finished(tmp_path, worker):
    dataset = open_dataset("digits", limit=200)
    path = tmp_path / "store.sqlite"
    store = Store(path)
    key = worker.key_for("clean", dataset)
    worker.run_job(store, key, dataset, worker.make_evaluator(), batch_size=50, progress=False)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[3 * 4096:6 * 4096] = b"\xab" * (3 * 4096)  # garbage over pages in the middle of the file
    path.write_bytes(bytes(data))
    reopened = Store(path)
    with pytest.raises(EllbenchError, match=r"is damaged .*move it aside") as caught:
        worker.run_job(reopened, key, dataset, worker.make_evaluator(), batch_size=50, progress=False)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("message, expected", [
    ("attempt to write a readonly database", "is read-only"),
    ("database is locked", "stayed locked by another process"),
    ("database or disk is full", "no space left for results store"),
    ("database disk image is malformed", "is damaged"),
    ("file is not a database", "is damaged"),
])
def test_sqlite_errors_become_one_line_naming_the_file_and_the_remedy(tmp_path, message, expected):
    from ellbench.store import store_error

    error = store_error(tmp_path / "ellbench.sqlite", sqlite3.OperationalError(message))
    assert isinstance(error, EllbenchError) and expected in str(error) and "\n" not in str(error)
    assert str(tmp_path / "ellbench.sqlite") in str(error)


def test_a_read_only_store_serves_reads_and_refuses_writes_in_one_line(tmp_path, worker):
    dataset = open_dataset("digits", limit=8)
    writer = Store(tmp_path / "store.sqlite")
    job = worker.run_job(writer, worker.key_for("clean", dataset), dataset, worker.make_evaluator(), batch_size=4,
                         progress=False)
    reader = Store(tmp_path / "store.sqlite", read_only=True)
    assert [j["id"] for j in reader.done_jobs()] == [job["id"]] and len(reader.outcomes(job["id"])) == 8
    with pytest.raises(EllbenchError, match="read-only"):
        reader.commit_batch(job["id"], 9, [{"idx": 99, "label": 0, "pred": 0, "correct": 1}])
    with pytest.raises(EllbenchError, match="results store"):
        Store(tmp_path / "absent.sqlite", read_only=True)
