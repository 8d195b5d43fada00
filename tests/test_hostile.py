"""Hostile input through the real CLI: every case exits 2 with exactly one line on stderr, and no file ever makes
ellbench (or timm on its behalf) run code. Hostile files are built here; pickles carry a `__reduce__` that would
create a marker file if anything unpickled them without weights_only."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

MICRO = "deit_micro_patch4_32"
MICRO_SETTINGS = {"img_size": 8, "patch_size": 2, "num_classes": 10}


class _TouchOnUnpickle:
    """Unpickling this creates `target`: the marker that code from a file ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


def assert_one_line_error(result, *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def good_checkpoint(tmp_path):
    """Random micro weights for 8x8 digits, as `ellbench train` would save them (no sidecar yet)."""
    import timm

    import ellbench  # noqa: F401  (registers the micro models)

    model = timm.create_model(MICRO, **MICRO_SETTINGS)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


COMMANDS = {
    "attack": lambda ckpt, out: ["attack", MICRO, "--checkpoint", str(ckpt), "--data", "digits", "--limit", "2",
                                 "--attack", "FGSM", "--param", "eps=1/255", "--device", "cpu", "--out", str(out)],
    "corrupt": lambda ckpt, out: ["corrupt", MICRO, "--checkpoint", str(ckpt), "--data", "digits", "--limit", "2",
                                  "--device", "cpu", "--out", str(out)],
    "collapse": lambda ckpt, out: ["collapse", MICRO, "--checkpoint", str(ckpt), "--data", "digits", "--limit", "2",
                                   "--device", "cpu", "--out", str(out)],
    "profile": lambda ckpt, out: ["profile", MICRO, "--checkpoint", str(ckpt), "--img-size", "8", "--batch-size",
                                  "2", "--repeats", "1", "--steps", "1", "--warmup", "0", "--latency-steps", "1",
                                  "--no-memory", "--out", str(out)],
}


@pytest.mark.parametrize("sidecar, message", [
    ({"model": MICRO, "model_kwargs": {**MICRO_SETTINGS, "pretrained": True,
                                       "pretrained_cfg_overlay": {"file": "EVIL"}}}, "'pretrained' is not allowed"),
    ({"model": MICRO, "model_kwargs": {**MICRO_SETTINGS, "pretrained_cfg_overlay": {"file": "EVIL"}}},
     "'pretrained_cfg_overlay' is not allowed"),
    ({"model": MICRO, "model_kwargs": {**MICRO_SETTINGS, "checkpoint_path": "EVIL"}}, "'checkpoint_path' is not"),
    ({"model": MICRO, "pretrained": True, "model_kwargs": MICRO_SETTINGS}, "unknown field 'pretrained'"),
    ({"model": MICRO, "model_kwargs": {**MICRO_SETTINGS, "img_size": "abc"}}, "img_size must be a positive int"),
    ({"model": MICRO, "model_kwargs": "img_size=8"}, "model_kwargs must be dict"),
    ({"model": MICRO, "model_kwargs": {**MICRO_SETTINGS, "num_classes": -3}}, "num_classes must be a positive"),
    (["not", "an", "object"], "must hold a JSON object"),
])
def test_a_sidecar_can_only_carry_typed_shape_settings_and_never_points_timm_at_a_file(
        run_ellbench, tmp_path, good_checkpoint, sidecar, message):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"head.weight": _TouchOnUnpickle(marker)}))
    good_checkpoint.with_suffix(".json").write_text(json.dumps(sidecar).replace("EVIL", str(evil)))
    result = run_ellbench(*COMMANDS["collapse"](good_checkpoint, tmp_path / "out"))
    assert_one_line_error(result, "sidecar", message)
    assert not marker.exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("container", ["plain", "nested", "zip"])
def test_a_malicious_pickle_never_runs_through_any_command(run_ellbench, tmp_path, command, container):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"head.weight": torch.zeros(10, 128), "trap": _TouchOnUnpickle(marker)}
    if container == "nested":
        payload = {"state_dict": {"model": payload}, "epoch": 3}
    if container == "zip":
        torch.save(payload, path)  # torch's zip format
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))  # a legacy pickle
    result = run_ellbench(*COMMANDS[command](path, tmp_path / "out"))
    assert_one_line_error(result, str(path), "refusing to load", "nothing was run")
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    (lambda path: torch.save(("a", "tuple"), path), "holds no state dict of tensors (found tuple)"),
    (lambda path: torch.save({"head.weight": "a string"}, path), "holds no state dict of tensors"),
    (lambda path: torch.save({"head.weight": torch.zeros(2)}, path.with_suffix(".tmp")) or path.write_bytes(
        path.with_suffix(".tmp").read_bytes()[:200]), "is unreadable"),
])
def test_broken_torch_checkpoints_are_one_line(run_ellbench, tmp_path, make, message):
    path = tmp_path / "weights.pt"
    make(path)
    result = run_ellbench(*COMMANDS["attack"](path, tmp_path / "out"))
    assert_one_line_error(result, str(path), message)


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_safetensors_are_one_line(run_ellbench, tmp_path, good_checkpoint, cut):
    data = good_checkpoint.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[:cut] if cut else b"")
    result = run_ellbench(*COMMANDS["collapse"](broken, tmp_path / "out"))
    assert_one_line_error(result, str(broken))


def test_sigterm_is_one_line_closes_the_attempt_and_the_rerun_completes_identically(subprocess_env, tmp_path):
    import signal
    import sqlite3
    import subprocess
    import time

    from conftest import ellbench_command

    out = tmp_path / "out"
    args = [*ellbench_command(), "attack", MICRO, "--data", "digits", "--limit", "48", "--batch-size", "4",
            "--attack", "PGD", "--param", "eps=2/255", "--param", "steps=30", "--device", "cpu", "--out", str(out)]
    victim = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env,
                              cwd=tmp_path)

    def committed_attack_batches() -> int:
        try:
            with sqlite3.connect(f"file:{out / 'ellbench.sqlite'}?mode=ro", uri=True) as db:
                return db.execute("SELECT COUNT(*) FROM batches JOIN jobs ON jobs.id = batches.job_id "
                                  "WHERE jobs.task = 'attack'").fetchone()[0]
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 240
    while committed_attack_batches() < 1 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, victim.communicate()[1][-2000:]
    victim.send_signal(signal.SIGTERM)
    stdout, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 143
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by SIGTERM"), stderr[-2000:]
    with sqlite3.connect(f"file:{out / 'ellbench.sqlite'}?mode=ro", uri=True) as db:
        statuses = [s for (s,) in db.execute("SELECT attempts.status FROM attempts JOIN jobs ON jobs.id = "
                                             "attempts.job_id WHERE jobs.task = 'attack'")]
    assert statuses == ["interrupted"]
    again = subprocess.run(args, capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    fresh = subprocess.run([*args[:-1], str(tmp_path / "fresh")], capture_output=True, text=True, env=subprocess_env,
                           cwd=tmp_path, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]

    def rows(folder):
        with sqlite3.connect(f"file:{folder / 'ellbench.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT idx, label, pred, correct, extra FROM outcomes JOIN jobs ON jobs.id = "
                              "outcomes.job_id WHERE jobs.task = 'attack' ORDER BY idx").fetchall()

    assert rows(out) == rows(tmp_path / "fresh") and len(rows(out)) == 48
