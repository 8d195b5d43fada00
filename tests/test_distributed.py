"""torch.distributed: backend choice, whole-batch sharding, and the real CLI under torchrun (2 gloo processes on CPU)
storing exactly what one process stores, also after one rank is SIGKILLed and the job is run again.

tests/test_store.py already resumes a toy job under torchrun; here the jobs are real `ellbench attack` and
`ellbench corrupt` runs of a briefly trained micro model (so predictions differ between examples).
"""

from __future__ import annotations

import datetime
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

from ellbench import distributed
from ellbench.errors import EllbenchError

MODEL = "deit_micro_patch4_32"
LIMIT, BATCH = 18, 4  # 5 batches (4, 4, 4, 4, 2): rank 0 takes 3, rank 1 takes 2


# ---------------------------------------------------------------------------------------------------------------
# Backend choice and settings (no processes).

@pytest.fixture
def launched(monkeypatch):
    """torchrun's environment for rank 1 of 2, with init_process_group recorded instead of called."""
    import torch.distributed as dist

    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    calls = {"init": [], "set_device": []}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls["init"].append(kwargs))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls["set_device"].append(device))
    return calls


def test_nccl_serves_gpus_and_gloo_the_rows_when_cuda_is_available(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.is_distributed()
    (init,) = launched["init"]
    assert init["backend"] == "cpu:gloo,cuda:nccl"
    assert init["timeout"] == datetime.timedelta(seconds=1800)
    assert launched["set_device"] == [1]  # LOCAL_RANK's GPU
    assert distributed.local_device("cuda") == "cuda:1"


def test_gloo_alone_without_cuda_and_the_timeout_comes_from_the_environment(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.is_distributed()
    (init,) = launched["init"]
    assert init["backend"] == "gloo" and init["timeout"] == datetime.timedelta(seconds=90)
    assert launched["set_device"] == []
    assert distributed.local_device("cpu") == "cpu"


def test_the_process_group_is_left_at_exit_and_a_failure_to_leave_is_silent(launched, monkeypatch):
    """Exiting with gloo's threads alive aborted a rank now and then (exit -6, "terminate called without an active
    exception": 3 of 40 two-rank runs before the exit hook, 0 of 40 after); so init registers a hook that leaves."""
    import atexit

    import torch.distributed as dist

    hooks, destroyed = [], []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.is_distributed()
    assert len(launched["init"]) == 1 and len(hooks) == 1
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: destroyed.append(True))
    hooks[0]()
    assert destroyed == [True]

    def broken():
        raise RuntimeError("connection reset by a peer that died")

    monkeypatch.setattr(dist, "destroy_process_group", broken)
    hooks[0]()  # exiting anyway: no exception escapes the hook
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: destroyed.append("again"))
    hooks[0]()  # already left (or never joined): nothing to do
    assert destroyed == [True]


def test_more_processes_than_gpus_leaves_the_gpu_unset(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.is_distributed()
    assert launched["set_device"] == []


def test_a_process_beyond_the_gpu_count_gets_a_user_error_for_cuda(launched, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EllbenchError, match="--nproc_per_node"):
        distributed.local_device("cuda")
    assert distributed.local_device("cpu") == "cpu"


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_a_bad_timeout_is_a_user_error(launched, monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(EllbenchError, match=distributed.TIMEOUT_ENV):
        distributed.is_distributed()
    assert launched["init"] == []


def test_world_size_without_torchrun_is_a_user_error_not_a_hang(launched, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(EllbenchError, match="MASTER_ADDR"):
        distributed.is_distributed()
    assert launched["init"] == []


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.is_writer()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


# ---------------------------------------------------------------------------------------------------------------
# runner.evaluate_batches with hand-started gloo ranks: more ranks than batches, and a rank that dies.

SHARD_WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from ellbench import distributed
    from ellbench.data import open_dataset
    from ellbench.runner import evaluate_batches

    limit, batch_size, todo, die_rank, limit_step, report = int(sys.argv[1]), int(sys.argv[2]), \\
        json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    limit += limit_step * distributed.rank()  # a rank that sees other data than rank 0
    evaluated = []

    def evaluate_batch(batch):
        if distributed.rank() == die_rank:
            os._exit(3)  # no goodbye to the process group
        evaluated.append(batch.indices.tolist())
        return [{"idx": int(i), "sum": round(float(image.sum()), 4)} for i, image in zip(batch.indices, batch.images)]

    try:
        received = [[b, rows] for b, rows in evaluate_batches(open_dataset("digits", limit=limit), todo, batch_size,
                                                              evaluate_batch)]
        outcome = {"received": received}
    except Exception as exc:  # the survivor's report of the dead peer, or of different data
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    Path(f"{report}{distributed.rank()}.json").write_text(json.dumps({"evaluated": evaluated, **outcome}))
''')


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(tmp_path, world: int, *args: str, timeout_s: int = 1800, script: Path | None = None) -> list:
    """`world` hand-launched ranks of a worker script (SHARD_WORKER by default) on a fresh local port."""
    if script is None:
        script = tmp_path / "shard_worker.py"
        script.write_text(SHARD_WORKER)
    port = str(free_port())
    processes = []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", **{distributed.TIMEOUT_ENV: str(timeout_s)})
        processes.append(subprocess.Popen([sys.executable, str(script), *args, str(tmp_path / "rank")], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def expected_rows(limit: int, batch_size: int, todo: list[int]) -> list:
    """What one process yields, from the data set directly: batch b holds examples [b*B, (b+1)*B)."""
    from ellbench.data import open_dataset

    dataset = open_dataset("digits", limit=limit)
    rows = []
    for batch in todo:
        indices = range(batch * batch_size, min(limit, (batch + 1) * batch_size))
        rows.append([batch, [{"idx": i, "sum": round(float(dataset[i][0].sum()), 4)} for i in indices]])
    return rows


def test_more_ranks_than_batches_leaves_a_rank_idle_and_loses_nothing(tmp_path):
    """One batch left (the short tail) for two ranks: rank 1 evaluates nothing yet joins the gather; rank 0 gets it."""
    limit, batch_size, todo = 7, 4, [1]
    processes = start_ranks(tmp_path, 2, str(limit), str(batch_size), json.dumps(todo), "-1", "0")
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["evaluated"] for r in reports] == [[[4, 5, 6]], []]
    assert reports[0]["received"] == expected_rows(limit, batch_size, todo)
    assert reports[1]["received"] == []  # only rank 0 receives rows


def test_a_rank_that_dies_ends_its_peer_with_an_error_not_a_hang(tmp_path):
    """Without torchrun to end the job, the survivor still stops: gloo sees the closed connection (or times out)."""
    processes = start_ranks(tmp_path, 2, "16", "4", json.dumps([0, 1, 2, 3]), "1", "0", timeout_s=30)
    began = time.monotonic()
    assert processes[1].wait(timeout=120) == 3
    processes[0].wait(timeout=120)
    assert time.monotonic() - began < 100
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["evaluated"] == [[0, 1, 2, 3]] and "error" in report


def test_ranks_that_see_different_data_stop_before_evaluating(tmp_path):
    """Rank 1 opened 9 examples, rank 0 opened 8: both stop with the one-line user error, nothing evaluated."""
    processes = start_ranks(tmp_path, 2, "8", "4", json.dumps([0, 1]), "-1", "1")
    for process in processes:
        process.wait(timeout=120)
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["evaluated"] == [] and report["error"] == "EllbenchError"
        assert "rank 1 sees 9 examples (digits:9:" in report["message"] and "rank 0 sees 8" in report["message"]


LATE_WORKER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from ellbench import distributed

    distributed.is_distributed()
    outcomes = []
    for timeout_s in (20.0, None):  # a long explicit wait, then the environment's 1 s
        if distributed.rank() == 1:
            time.sleep(4)
        began = time.monotonic()
        try:
            distributed.barrier(timeout_s)
            outcomes.append("met")
        except RuntimeError:
            outcomes.append(f"timed out {time.monotonic() - began:.2f}")
            break
    Path(f"{sys.argv[1]}{distributed.rank()}.txt").write_text(", ".join(outcomes))
''')


def test_barrier_waits_as_long_as_asked_and_otherwise_the_environment_timeout(tmp_path):
    """A rank 4 s late: a 20 s barrier meets it; under ELLBENCH_DIST_TIMEOUT=1 the waiting rank stops after 1 s."""
    (tmp_path / "shard_worker.py").write_text(LATE_WORKER)
    processes = start_ranks(tmp_path, 2, timeout_s=1, script=tmp_path / "shard_worker.py")
    for process in processes:
        process.wait(timeout=120)
    met, timed_out = (tmp_path / "rank0.txt").read_text().split(", ")
    assert met == "met" and timed_out.startswith("timed out")
    assert 0.9 < float(timed_out.split()[-1]) < 3.5  # not the 4 s it would take to meet the late rank


# ---------------------------------------------------------------------------------------------------------------
# The real CLI under torchrun.

@pytest.fixture(scope="module")
def child_env(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200",
               ELLBENCH_OUT=str(tmp_path_factory.mktemp("default-out")))
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-block micro DeiT trained for a few steps on digits: its predictions vary from example to example."""
    from safetensors.torch import save_file

    from ellbench.data import dataset_batch, open_dataset
    from ellbench.models.factory import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = open_dataset("digits", split="train", limit=256)
        images, labels = dataset_batch(train, list(range(256)))
        model_kwargs = {"img_size": 8, "num_classes": 10, "patch_size": 2, "depth": 2}
        model = build_model(MODEL, seed=0, **model_kwargs)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        for step in range(25):
            chosen = torch.arange(step * 64, step * 64 + 64) % 256
            loss = torch.nn.functional.cross_entropy(model(images[chosen]), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("checkpoint") / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"model": MODEL, "model_kwargs": model_kwargs}))
    return path


def attack_args(checkpoint: Path, out: Path) -> list[str]:
    return ["attack", MODEL, "--checkpoint", str(checkpoint), "--attack", "PGD", "--param", "eps=8/255",
            "--param", "steps=2", "--limit", str(LIMIT), "--batch-size", str(BATCH), "--device", "cpu",
            "--out", str(out)]


def ellbench_command() -> list[str]:
    script = Path(sys.executable).with_name("ellbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ellbench"]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def run(command: list[str], env: dict, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def stored(out: Path) -> dict:
    """{job id: (task, status, summary without resume counts, outcome rows)} read with plain SQL."""
    with sqlite3.connect(f"file:{out / 'ellbench.sqlite'}?mode=ro", uri=True) as conn:
        jobs = conn.execute("SELECT id, task, status, summary FROM jobs").fetchall()
        result = {}
        for job_id, task, status, summary in jobs:
            summary = {k: v for k, v in json.loads(summary or "{}").items() if k != "batches_resumed"}
            rows = conn.execute("SELECT idx, label, pred, correct, extra FROM outcomes WHERE job_id = ? ORDER BY idx",
                                (job_id,)).fetchall()
            result[job_id] = (task, status, summary, rows)
    return result


def assert_whole_batches(out: Path) -> dict:
    """Every job holds whole committed batches and nothing else; returns {job id: committed batches}."""
    committed = {}
    with sqlite3.connect(f"file:{out / 'ellbench.sqlite'}?mode=ro", uri=True) as conn:
        for job_id, total, batch_size in conn.execute("SELECT id, total, batch_size FROM jobs WHERE total > 0"):
            batches = dict(conn.execute("SELECT batch, size FROM batches WHERE job_id = ?", (job_id,)).fetchall())
            expected = set()
            for batch, size in batches.items():
                examples = range(batch * batch_size, min(total, (batch + 1) * batch_size))
                assert size == len(examples)
                expected.update(examples)
            rows = [idx for (idx,) in conn.execute("SELECT idx FROM outcomes WHERE job_id = ?", (job_id,))]
            assert len(rows) == len(set(rows)) and set(rows) == expected
            committed[job_id] = set(batches)
    return committed


@pytest.fixture(scope="module")
def attack_reference(checkpoint, child_env, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("attack-one-process")
    run([*ellbench_command(), *attack_args(checkpoint, out / "out")], child_env, out)
    return stored(out / "out")


def test_torchrun_attack_stores_what_one_process_stores(attack_reference, checkpoint, child_env, tmp_path):
    result = run(torchrun(2, "-m", "ellbench", *attack_args(checkpoint, tmp_path / "out")), child_env, tmp_path)
    assert stored(tmp_path / "out") == attack_reference
    tasks = sorted(task for task, *_ in attack_reference.values())
    assert tasks == ["attack", "attack-checks", "clean"]
    attack_rows = next(rows for task, _, _, rows in attack_reference.values() if task == "attack")
    assert len(attack_rows) == LIMIT and len({pred for _, _, pred, _, _ in attack_rows}) > 2  # not a constant model
    assert result.stdout.count(f"{MODEL} on digits ({LIMIT} examples)") == 1  # rank 0 prints, rank 1 does not
    assert result.stdout.count("PGD eps=8/255") == 1


def test_torchrun_corruption_job_stores_what_one_process_stores(checkpoint, child_env, tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text('description = "tiny"\nbaseline = "hendrycks"\nseverities = [1, 5]\n'
                     'corruptions = ["gaussian_noise"]\n')

    def args(name: str) -> list[str]:
        return ["corrupt", MODEL, "--checkpoint", str(checkpoint), "--suite", str(suite), "--limit", "10",
                "--batch-size", "4", "--workers", "1", "--cache-dir", str(tmp_path / f"cache-{name}"), "--device",
                "cpu", "--out", str(tmp_path / name)]

    run([*ellbench_command(), *args("one")], child_env, tmp_path)
    result = run(torchrun(2, "-m", "ellbench", *args("two")), child_env, tmp_path)
    one, two = stored(tmp_path / "one"), stored(tmp_path / "two")
    assert two == one
    corrupted = [rows for task, _, _, rows in one.values() if rows and task != "clean"]
    assert len(corrupted) == 2 and all(len(rows) == 10 for rows in corrupted)
    assert corrupted[0] != corrupted[1]  # severities 1 and 5 differ: the rows say something
    assert result.stdout.count("summary") == 1


PARKING_LAUNCHER = textwrap.dedent('''
    """`ellbench ARGS` whose rank 1 parks inside its second attack batch, telling the test its pid."""
    import os, sys, time
    from pathlib import Path
    from ellbench.cli import main
    from ellbench.tasks import attack

    parked_file = Path(os.environ["PARKED_FILE"])
    real_evaluator = attack.attack_evaluator

    def parking_evaluator(model, entry, *, seed):
        evaluate, seen = real_evaluator(model, entry, seed=seed), []

        def evaluate_batch(batch):
            if os.environ["RANK"] == "1" and len(seen) == 1:
                parked_file.write_text(str(os.getpid()))
                time.sleep(600)
            seen.append(int(batch.indices[0]))
            return evaluate(batch)

        return evaluate_batch

    attack.attack_evaluator = parking_evaluator
    sys.argv = ["ellbench", *sys.argv[1:]]
    main()
''')


def test_sigkill_of_one_rank_leaves_whole_batches_and_a_rerun_completes_identically(
        attack_reference, checkpoint, child_env, tmp_path):
    launcher, parked = tmp_path / "launcher.py", tmp_path / "parked"
    launcher.write_text(PARKING_LAUNCHER)
    out = tmp_path / "out"
    victim = subprocess.Popen(torchrun(2, str(launcher), *attack_args(checkpoint, out)), env=dict(
        child_env, PARKED_FILE=str(parked)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not parked.exists() or not parked.read_text():
            assert victim.poll() is None, victim.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "rank 1 never parked"
            time.sleep(0.05)
        os.kill(int(parked.read_text()), signal.SIGKILL)
        victim.wait(timeout=120)  # torchrun ends rank 0 too: nobody waits forever
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode != 0
    committed = assert_whole_batches(out)
    interrupted = stored(out)
    (attack_job,) = [job for job, (task, *_) in interrupted.items() if task == "attack"]
    assert interrupted[attack_job][1] != "done"
    assert committed[attack_job] <= {0, 1, 2}  # rank 1 never finished batch 3

    result = run(torchrun(2, "-m", "ellbench", *attack_args(checkpoint, out)), child_env, tmp_path)
    assert_whole_batches(out)
    assert stored(out) == attack_reference
    with sqlite3.connect(f"file:{out / 'ellbench.sqlite'}?mode=ro", uri=True) as conn:
        summary, = conn.execute("SELECT summary FROM jobs WHERE id = ?", (attack_job,)).fetchone()
        statuses = [s for (s,) in conn.execute("SELECT status FROM attempts WHERE job_id = ? ORDER BY attempt",
                                               (attack_job,))]
    assert json.loads(summary)["batches_resumed"] == len(committed[attack_job])
    assert statuses[-1] == "done" and statuses[0] in ("abandoned", "interrupted") and len(statuses) == 2
    assert result.stdout.count(f"{MODEL} on digits ({LIMIT} examples)") == 1
