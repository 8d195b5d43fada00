"""The `ellbench` console script as a user meets it (one-line errors with exit 2, a light --help) and `train`."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

MICRO = "deit_micro_patch4_32"


def test_the_heavy_import_trap_works(run_ellbench, light_env):
    result = run_ellbench("models")  # lists models: needs timm
    assert result.returncode != 0 and "heavy import of" in result.stderr


def test_help_answers_without_heavy_imports(run_ellbench, light_env):
    result = run_ellbench("--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for command in ("models", "train", "demo"):
        assert command in result.stdout
    bare = run_ellbench()  # no arguments: the same help, exit 0
    assert bare.returncode == 0 and "train" in bare.stdout and "Traceback" not in bare.stdout + bare.stderr


def test_every_command_and_option_is_explained():
    import typer.main

    from ellbench.cli import app

    group = typer.main.get_command(app)
    assert {"models", "train", "demo"} <= set(group.commands)
    for name, command in group.commands.items():
        assert (command.help or "").strip(), f"`ellbench {name}` has no help"
        for param in command.params:
            assert (getattr(param, "help", None) or "").strip(), f"`ellbench {name}` {param.name} has no help"


def slow_argument_check(case: str, arguments: list[str], words: list[str]):
    return pytest.param(case, arguments, words, True, id=case)


# (case, arguments, words the one line must hold, light: answered before any heavy import).
# {tmp} and {file} stand for tmp_path and a regular file inside it.
BAD_INPUT = [
    ("unknown data set", ["train", MICRO, "--dataset", "cifar-11"], ["cifar-11", "digits"], True),
    ("unknown demo data set", ["demo", "--dataset", "imagenet"], ["imagenet"], True),
    ("negative epochs", ["train", MICRO, "--epochs", "-1"], ["--epochs", "-1"], True),
    ("zero demo epochs", ["demo", "--epochs", "0", "--out", "{tmp}/demo"], ["--epochs"], True),
    ("negative demo workers", ["demo", "--workers", "-1", "--out", "{tmp}/demo"], ["--workers"], True),
    ("epochs not a number", ["train", MICRO, "--epochs", "many"], ["--epochs"], True),
    ("bad seeds", ["train", MICRO, "--seeds", "1,x"], ["--seeds"], True),
    ("unwritable out", ["train", MICRO, "--epochs", "1", "--out", "{file}/sub"], ["not writable"], True),
    ("unwritable demo out", ["demo", "--out", "{file}/sub"], ["not writable"], True),
    ("unknown command", ["frobnicate"], ["frobnicate"], True),
    ("missing argument", ["train"], ["model"], True),
    ("attack negative limit", ["attack", MICRO, "--limit", "-2", "--out", "{tmp}/out"], ["--limit"], True),
    ("collapse unknown data", ["collapse", MICRO, "--data", "nope", "--out", "{tmp}/out"], ["nope"], True),
    ("profile zero repeats", ["profile", MICRO, "--repeats", "0", "--out", "{tmp}/out"], ["--repeats"], True),
    ("attack unknown amp", ["attack", MICRO, "--amp", "fp8", "--out", "{tmp}/out"], ["--amp", "fp8"], True),
    ("collapse negative workers", ["collapse", MICRO, "--workers", "-1", "--out", "{tmp}/out"], ["--workers"], True),
    ("corrupt negative workers", ["corrupt", MICRO, "--workers", "-2", "--out", "{tmp}/out"], ["--workers"], True),
    ("corrupt unknown backend", ["corrupt", MICRO, "--corruption-backend", "opencv", "--out", "{tmp}/out"],
     ["--corruption-backend", "opencv", "imagecorruptions, torch"], True),
    ("corrupt backend for released files", ["corrupt", MICRO, "--imagenet-c", "{tmp}", "--corruption-backend",
                                            "torch", "--out", "{tmp}/out"], ["--corruption-backend", "released"], True),
    ("shift unknown amp", ["shift", MICRO, "--dataset", "imagenet-a", "--data", "{tmp}", "--amp", "half"],
     ["--amp", "half"], True),
    ("unknown model", ["train", "no_such_model", "--out", "{tmp}/out"], ["no_such_model"], False),
    ("missing Fashion-MNIST folder", ["demo", "--dataset", "fashion-mnist", "--data-root", "/nonexistent",
                                      "--out", "{tmp}/demo"], ["/nonexistent", "apt-get install"], False),
    slow_argument_check("attack unknown suite", ["attack", MICRO, "--suite", "nosuch", "--out", "{tmp}/out"],
                        ["nosuch"]),
    slow_argument_check("attack missing checkpoint", ["attack", MICRO, "--checkpoint", "{tmp}/none.safetensors",
                                                      "--out", "{tmp}/out"], ["not found"]),
    slow_argument_check("corrupt unknown suite", ["corrupt", MICRO, "--suite", "nosuch", "--out", "{tmp}/out"],
                        ["nosuch"]),
    slow_argument_check("shift unknown data set", ["shift", "deit_tiny_patch16_224", "--dataset", "imagenet-x",
                                                   "--data", "{tmp}", "--out", "{tmp}/out"], ["imagenet-x"]),
    slow_argument_check("profile unknown amp", ["profile", MICRO, "--amp", "fp8", "--out", "{tmp}/out"], ["fp8"]),
    ("eval crop pct above 1", ["eval", MICRO, "--crop-pct", "1.5", "--out", "{tmp}/out"], ["--crop-pct"], True),
    ("eval unknown interpolation", ["eval", MICRO, "--interpolation", "cubic", "--out", "{tmp}/out"],
     ["cubic", "bicubic"], True),
    ("eval weights twice", ["eval", MICRO, "--pretrained", "--checkpoint", "{file}", "--out", "{tmp}/out"],
     ["--pretrained", "--checkpoint"], True),
    ("eval logits not npy", ["eval", MICRO, "--save-logits", "{tmp}/l.txt", "--out", "{tmp}/out"], [".npy"], True),
    ("eval unknown data", ["eval", MICRO, "--data", "nope", "--out", "{tmp}/out"], ["nope"], True),
    ("eval img-size on a built-in set", ["eval", MICRO, "--img-size", "64", "--out", "{tmp}/out"],
     ["--img-size", "built-in"], False),
    ("eval unknown tag", ["eval", "deit_tiny_patch16_224.nope", "--out", "{tmp}/out"], ["nope", "fb_in1k"], False),
    ("eval published weights of a model without", ["eval", "elliptical_tiny_patch16_224", "--pretrained",
                                                   "--out", "{tmp}/out"], ["no published weights"], False),
]


@pytest.mark.parametrize("case, arguments, words, light", BAD_INPUT,
                         ids=[entry[0] if isinstance(entry, tuple) else None for entry in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(request, run_ellbench, tmp_path, case, arguments, words, light):
    if light:
        request.getfixturevalue("light_env")
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    result = run_ellbench(*(a.format(tmp=tmp_path, file=regular_file) for a in arguments))
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0]


def run_main_with_a_failing_command(monkeypatch, error: BaseException):
    """Call the console entry point in-process with a `train` command whose first step raises `error`."""
    from ellbench import cli

    def fail(text):
        raise error

    monkeypatch.setattr(cli, "_parse_seeds", fail)
    monkeypatch.setattr(sys, "argv", ["ellbench", "train", MICRO])
    cli.main()


def test_a_bug_surfaces_as_itself_not_as_a_user_error(monkeypatch):
    # Only EllbenchError and usage errors become one line; a real bug keeps its own traceback.
    with pytest.raises(RuntimeError, match="a real bug"):
        run_main_with_a_failing_command(monkeypatch, RuntimeError("a real bug"))


def test_ctrl_c_inside_a_command_is_one_line_and_exit_130(monkeypatch, capsys):
    # Python raises KeyboardInterrupt in the main thread on SIGINT; here it comes from inside the command.
    with pytest.raises(SystemExit) as caught:
        run_main_with_a_failing_command(monkeypatch, KeyboardInterrupt())
    assert caught.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), lines


# --- ellbench train ---------------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_writes_a_checkpoint_and_sidecar_and_reuses_them(run_ellbench, tmp_path, monkeypatch, one_thread):
    from safetensors.torch import load_file

    from ellbench.data import open_dataset
    from ellbench.models.factory import build_model
    from ellbench.models.loading import load_model
    from ellbench.train import TrainConfig, train

    out = tmp_path / "out"
    result = run_ellbench("train", MICRO, "--dataset", "digits", "--limit", "64", "--epochs", "1", "--out", str(out),
                          "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    checkpoint = Path(record["checkpoint"])
    sidecar = checkpoint.with_suffix(".json")
    assert checkpoint.parent == out / "checkpoints" and checkpoint.suffix == ".safetensors"
    assert checkpoint.is_file() and sidecar.is_file()
    assert not list(out.glob("checkpoints/*.state.pt")) and not list(out.glob("checkpoints/*.tmp"))
    saved = json.loads(sidecar.read_text())
    assert saved["model"] == MICRO
    assert saved["train"]["epochs"] == 1 and saved["train"]["limit"] == 64 and saved["train"]["dataset"] == "digits"
    assert saved["model_kwargs"]["img_size"] == 8 and saved["model_kwargs"]["num_classes"] == 10
    assert saved["dataset"] == open_dataset("digits", "train", limit=64).fingerprint
    assert [entry["epoch"] for entry in saved["history"]] == [1]

    # The tensors are the model's own, complete; they load into a fresh model that then classifies 8x8 digits.
    tensors = load_file(str(checkpoint))
    fresh = build_model(MICRO, **saved["model_kwargs"]).model
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    assert saved["parameters"] == sum(tensors[name].numel() for name, _ in fresh.named_parameters())
    loaded = load_model(MICRO, checkpoint)  # its settings come from the sidecar
    assert all(torch.equal(loaded.model.state_dict()[k], tensors[k]) for k in tensors)
    images, _ = open_dataset("digits", limit=4).get_batch(torch.arange(4))
    with torch.no_grad():
        assert loaded(images).shape == (4, 10)

    # A second run with the same settings reuses the checkpoint: no model is built, nothing is rewritten.
    digest = sha256(checkpoint)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished checkpoint was trained again")

    monkeypatch.setattr("ellbench.models.factory.build_model", no_training)
    again = train(TrainConfig(model=MICRO, dataset="digits", epochs=1, limit=64), out / "checkpoints",
                  progress=False)
    assert again["reused"] is True and again["history"] == saved["history"]
    assert sha256(checkpoint) == digest


def _fail_at_step(monkeypatch, step: int) -> list[int]:
    """Make training's augmentation raise at the given step (1-based); returns the list of batch sizes it saw."""
    import ellbench.train as training

    real_augment, steps = training._augment, []

    def augment_then_fail(images, kind, generator):
        steps.append(len(images))
        if len(steps) == step:
            raise RuntimeError("power cut")
        return real_augment(images, kind, generator)

    monkeypatch.setattr(training, "_augment", augment_then_fail)
    return steps


@pytest.mark.parametrize("model", [MICRO, "mom_micro_patch4_32"])  # MoM draws its subsets from its own generator
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, one_thread, model):
    """Epoch 2 of 2 fails; the re-run restarts from the state file and ends bitwise equal to an unbroken run."""
    from safetensors.torch import load_file

    from ellbench.train import TrainConfig, checkpoint_path, train

    config = TrainConfig(model=model, dataset="digits", epochs=2, batch_size=8, limit=16, augment="crop")
    unbroken = train(config, tmp_path / "unbroken", progress=False)

    steps = _fail_at_step(monkeypatch, 3)  # 16 examples / 8 per step: step 3 is the first of epoch 2
    with pytest.raises(RuntimeError, match="power cut"):
        train(config, tmp_path / "broken", progress=False)
    final = checkpoint_path(tmp_path / "broken", config)
    state_file = final.with_suffix(".state.pt")
    assert not final.exists() and state_file.is_file()
    assert torch.load(state_file, weights_only=True)["epoch"] == 1

    steps.clear()
    resumed = train(config, tmp_path / "broken", progress=False)
    assert steps == [8, 8]  # only epoch 2 ran
    assert resumed["history"] == unbroken["history"]
    assert not state_file.exists()
    ours, reference = load_file(str(final)), load_file(unbroken["checkpoint"])
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("model", [MICRO, "mom_micro_patch4_32"])
def test_training_interrupted_within_an_epoch_resumes_from_that_batch(tmp_path, monkeypatch, one_thread, model):
    """With the state saved after every step, a failure in the middle of epoch 2 loses one step: the re-run trains
    only the rest of that epoch (its order and running sums restored) and ends bitwise equal to an unbroken run."""
    from safetensors.torch import load_file

    import ellbench.train as training
    from ellbench.train import TrainConfig, checkpoint_path, train

    config = TrainConfig(model=model, dataset="digits", epochs=2, batch_size=8, limit=24, augment="crop")
    unbroken = train(config, tmp_path / "unbroken", progress=False)  # default interval: no state within an epoch

    monkeypatch.setattr(training, "STATE_EVERY_SECONDS", 0.0)
    steps = _fail_at_step(monkeypatch, 5)  # 24 examples / 8 per step: step 5 is the second of epoch 2
    with pytest.raises(RuntimeError, match="power cut"):
        train(config, tmp_path / "broken", progress=False)
    final = checkpoint_path(tmp_path / "broken", config)
    state = torch.load(final.with_suffix(".state.pt"), weights_only=True)
    assert (state["epoch"], state["start"], state["seen"]) == (1, 8, 8)

    steps.clear()
    resumed = train(config, tmp_path / "broken", progress=False)
    assert steps == [8, 8]  # the last two steps of epoch 2
    assert resumed["history"] == unbroken["history"]
    ours, reference = load_file(str(final)), load_file(unbroken["checkpoint"])
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("model", [MICRO, "mom_micro_patch4_32"])
def test_training_optimiser_is_bitwise_torch_adamw_per_tensor_loop(tmp_path, monkeypatch, one_thread, model):
    """Training's AdamW runs foreach (faster on CPU); the weights must be bitwise those of torch's per-tensor loop, so
    that results trained before the change stay valid. fused=True would change them: the check can tell."""
    from safetensors.torch import load_file

    import ellbench.train as training
    from ellbench.train import TrainConfig, train

    config = TrainConfig(model=model, dataset="digits", epochs=2, batch_size=8, limit=24, augment="crop")
    ours = load_file(train(config, tmp_path / "ours", progress=False)["checkpoint"])
    adamw = torch.optim.AdamW
    trained = {}
    for variant, options in (("loop", {"foreach": False}), ("fused", {"fused": True})):
        calls = []

        def make(params, _options=options, _calls=calls, **kwargs):
            _calls.append(kwargs.pop("foreach", None))
            return adamw(params, **kwargs, **_options)

        monkeypatch.setattr(training.torch.optim, "AdamW", make)
        trained[variant] = load_file(train(config, tmp_path / variant, progress=False)["checkpoint"])
        assert calls == [True]  # train asked for foreach; the variant overrode it
    monkeypatch.setattr(training.torch.optim, "AdamW", adamw)
    assert ours.keys() == trained["loop"].keys()
    for name, tensor in trained["loop"].items():
        assert torch.equal(ours[name], tensor), name
    assert any(not torch.equal(ours[name], tensor) for name, tensor in trained["fused"].items())


def test_train_patch_size_sets_the_token_grid_and_is_recorded(run_ellbench, tmp_path, one_thread):
    from ellbench.models.loading import load_model
    from ellbench.train import TrainConfig, train

    default = train(TrainConfig(model=MICRO, dataset="digits", epochs=1, batch_size=16, limit=16), tmp_path / "a",
                    progress=False)
    assert default["model_kwargs"]["patch_size"] == 2 and "patch_size" not in default["train"]  # old records match
    wide = train(TrainConfig(model=MICRO, dataset="digits", epochs=1, batch_size=16, limit=16, patch_size=4),
                 tmp_path / "b", progress=False)
    assert wide["model_kwargs"]["patch_size"] == 4 and wide["train"]["patch_size"] == 4
    # 8 px digits in 4 px patches: a 2 x 2 grid, rebuilt from the sidecar for evaluation.
    assert load_model(MICRO, wide["checkpoint"]).model.patch_embed.num_patches == 4
    assert load_model(MICRO, default["checkpoint"]).model.patch_embed.num_patches == 16

    result = run_ellbench("train", MICRO, "--dataset", "digits", "--limit", "16", "--epochs", "1", "--patch-size", "3",
                          "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1
    assert "does not divide" in result.stderr and not list((tmp_path / "c").rglob("*.safetensors"))

    # --curve: the test split's accuracy after each epoch, the same figure the trained weights then give.
    result = run_ellbench("train", MICRO, "--dataset", "digits", "--limit", "16", "--epochs", "2", "--patch-size", "4",
                          "--curve", "--out", str(tmp_path / "d"), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert [entry["epoch"] for entry in record["history"]] == [1, 2]
    from ellbench.data import open_dataset

    test_set = open_dataset("digits", "test")
    model = load_model(MICRO, record["checkpoint"])
    with torch.no_grad():
        predictions = model(test_set.get_batch(torch.arange(len(test_set)))[0]).argmax(1)
    accuracy = (predictions == test_set.get_batch(torch.arange(len(test_set)))[1]).float().mean().item()
    assert record["history"][-1]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_training_curve_is_the_test_accuracy_after_each_epoch_and_leaves_the_weights_alone(tmp_path, one_thread):
    from safetensors.torch import load_file

    from ellbench.data import open_dataset
    from ellbench.models.loading import load_model
    from ellbench.train import TrainConfig, train

    test_set = open_dataset("digits", "test", limit=40)
    config = TrainConfig(model=MICRO, dataset="digits", epochs=2, batch_size=16, limit=64)
    curved = train(config, tmp_path / "curve", progress=False, eval_set=test_set)
    plain = train(config, tmp_path / "plain", progress=False)
    assert [sorted(entry) for entry in plain["history"]] == [["epoch", "loss", "train_accuracy"]] * 2
    assert [{k: v for k, v in e.items() if k != "test_accuracy"} for e in curved["history"]] == plain["history"]
    ours, reference = load_file(curved["checkpoint"]), load_file(plain["checkpoint"])
    assert all(torch.equal(ours[name], reference[name]) for name in reference)
    # the last epoch's point is the final checkpoint's accuracy on the test set, computed here independently
    model = load_model(MICRO, curved["checkpoint"])
    images, labels = test_set.get_batch(torch.arange(len(test_set)))
    with torch.no_grad():
        expected = int((model(images).argmax(1) == labels).sum()) / len(test_set)
    assert curved["history"][-1]["test_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_attack_with_workers_and_bf16_stores_the_same_rows_as_in_process(run_ellbench, tmp_path):
    """--workers changes how batches are loaded, never a stored outcome; --amp bf16 is recorded in the job key."""
    from ellbench.store import Store

    outcomes = {}
    for workers in ("2", "0"):
        out = tmp_path / f"out-{workers}"
        result = run_ellbench("attack", MICRO, "--data", "digits", "--limit", "10", "--batch-size", "4", "--attack",
                              "FGSM", "--param", "eps=8/255", "--amp", "bf16", "--workers", workers, "--device", "cpu",
                              "--json", "--out", str(out))
        assert result.returncode == 0, result.stderr
        store = Store(out / "ellbench.sqlite")
        jobs = {job["task"]: job for job in store.done_jobs()}
        assert jobs["clean"]["settings"] == {"batch_size": 4, "amp": "bf16"}
        assert jobs["attack"]["settings"]["amp"] == "bf16"
        assert jobs["attack"]["provenance"]["loader_workers"] == int(workers)
        outcomes[workers] = {task: store.outcomes(jobs[task]["id"]).sort_values("idx").reset_index(drop=True)
                             for task in ("clean", "attack")}
    for task in ("clean", "attack"):
        assert len(outcomes["2"][task]) == 10 and outcomes["2"][task].equals(outcomes["0"][task])
