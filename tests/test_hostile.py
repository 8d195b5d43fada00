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
    "eval": lambda ckpt, out: ["eval", MICRO, "--checkpoint", str(ckpt), "--data", "digits", "--limit", "2",
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


# Every command with --checkpoint reads it through one function: every container through four commands, and one
# (nested in a legacy pickle) through eval, keep the suite's time down.
@pytest.mark.parametrize("command, container", [
    *((command, container) for command in sorted(set(COMMANDS) - {"eval"}) for container in ("plain", "nested", "zip")),
    ("eval", "nested"),
])
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


# --- Flags and files answered before any heavy import ------------------------------------------------------------
# (case, arguments, words the one line must hold). {tmp} is tmp_path; {suite} a suite file the case writes first.
HUGE = "99999999999999999999"  # beyond SQLite's INTEGER and torch's seed
LIGHT_CASES = [
    ("attack batch size beyond SQLite", ["attack", MICRO, "--batch-size", HUGE], ["--batch-size", "at most"]),
    ("attack seed beyond SQLite", ["attack", MICRO, "--seed", HUGE], ["--seed", "2**63-1"]),
    ("attack limit beyond SQLite", ["attack", MICRO, "--limit", HUGE], ["--limit", "at most"]),
    ("eval batch of 100000", ["eval", MICRO, "--batch-size", "100000"], ["--batch-size", "65536"]),
    ("eval image of 100000 px", ["eval", MICRO, "--img-size", "100000"], ["--img-size", "4096"]),
    ("eval crop pct nan", ["eval", MICRO, "--crop-pct", "nan"], ["--crop-pct"]),
    ("collapse negative seed", ["collapse", MICRO, "--seed", "-1"], ["--seed"]),
    ("corrupt seed beyond SQLite", ["corrupt", MICRO, "--seed", HUGE], ["--seed"]),
    ("shift batch beyond SQLite", ["shift", MICRO, "--dataset", "imagenet-a", "--data", "{tmp}", "--batch-size", HUGE],
     ["--batch-size"]),
    ("profile negative seed", ["profile", MICRO, "--seed", "-1"], ["--seed"]),
    ("profile batch of 100000", ["profile", MICRO, "--batch-size", "100000"], ["--batch-size", "65536"]),
    ("profile image of 100000 px", ["profile", MICRO, "--img-size", "100000"], ["--img-size", "4096"]),
    ("report negative seed", ["report", "--seed", "-1", "--compare", "a,b"], ["--seed"]),
    ("report a billion resamples", ["report", "--resamples", "1000000000"], ["--resamples", "1000000"]),
    ("train weight decay nan", ["train", MICRO, "--weight-decay", "nan"], ["--weight-decay", "nan"]),
    ("train weight decay inf", ["train", MICRO, "--weight-decay", "inf"], ["--weight-decay", "inf"]),
    ("train lr nan", ["train", MICRO, "--lr", "nan"], ["--lr"]),
    ("train lr -inf", ["train", MICRO, "--lr", "-inf"], ["--lr"]),
    ("train warm-up nan", ["train", MICRO, "--warmup-epochs", "nan"], ["--warmup-epochs"]),
    ("train label smoothing 1.5", ["train", MICRO, "--label-smoothing", "1.5"], ["--label-smoothing"]),
    ("train seed beyond SQLite", ["train", MICRO, "--seeds", f"0,{HUGE}"], ["--seeds"]),
    ("train batch beyond SQLite", ["train", MICRO, "--batch-size", HUGE], ["--batch-size"]),
    ("corrupt from two sources", ["corrupt", MICRO, "--imagenet-c", "{tmp}", "--data", "digits"],
     ["choose one", "--data", "--imagenet-c"]),
    ("corruption suite severities not a list", ["corrupt", MICRO, "--suite", "{suite}"], ["severities"]),
    ("corruption suite binary", ["corrupt", MICRO, "--suite", "{suite}"], ["{suite}"]),
    ("corruption suite unknown key", ["corrupt", MICRO, "--suite", "{suite}"], ["unknown key", "levels"]),
    ("corruption suite severity 9", ["corrupt", MICRO, "--suite", "{suite}"], ["9"]),
]
SUITE_FILES = {
    "corruption suite severities not a list": b'corruptions = ["fog"]\nseverities = 3\n',
    "corruption suite binary": bytes(range(256)) * 4,
    "corruption suite unknown key": b'corruptions = ["fog"]\nseverities = [1]\nlevels = [2]\n',
    "corruption suite severity 9": b'corruptions = ["fog"]\nseverities = [9]\n',
}


@pytest.mark.parametrize("case, arguments, words", LIGHT_CASES, ids=[case for case, _, _ in LIGHT_CASES])
def test_hostile_flags_and_suite_files_are_one_line_before_any_heavy_import(run_ellbench, light_env, tmp_path,
                                                                            case, arguments, words):
    suite = tmp_path / "suite.toml"
    if case in SUITE_FILES:
        suite.write_bytes(SUITE_FILES[case])
    result = run_ellbench(*(a.format(tmp=tmp_path, suite=suite) for a in arguments), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, *(w.format(suite=suite) for w in words))
    assert "heavy import" not in result.stderr


# --- Attack settings the torchattacks class would refuse (or trip over mid-attack) --------------------------------
ATTACK_CASES = [  # through the CLI: one per way a setting arrives
    ("APGD unknown norm", ["--attack", "APGD", "--param", "eps=1/255", "--param", "norm=L3"], ["norm", "Linf, L2"]),
    ("APGD unknown loss in a suite", ["--suite", "{suite}"], ["loss", "ce, dlr"]),
    ("Pixle patch size not a number", ["--attack", "Pixle", "--param", "x_dimensions=abc"], ["x_dimensions", "abc"]),
]


@pytest.mark.parametrize("case, arguments, words", ATTACK_CASES, ids=[case for case, _, _ in ATTACK_CASES])
def test_attack_settings_are_checked_against_the_class_before_any_work(run_ellbench, tmp_path, case, arguments,
                                                                       words):
    suite = tmp_path / "attacks.toml"
    suite.write_text('[[attacks]]\nclass = "APGD"\neps = [0.01]\nprotocol = "standard"\nparams = { loss = "bogus" }\n')
    result = run_ellbench("attack", MICRO, "--out", str(tmp_path / "out"),
                          *(a.format(suite=suite) for a in arguments))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out" / "ellbench.sqlite").exists()  # refused before the store was opened


@pytest.mark.parametrize("attack, params, words", [
    ("APGD", {"eps": 0.01, "loss": "bogus"}, ["loss", "ce, dlr"]),
    ("Pixle", {"x_dimensions": 0}, ["Pixle refuses setting x_dimensions=0"]),
    ("Pixle", {"restarts": -1}, ["Pixle refuses setting restarts=-1"]),
    ("Pixle", {"x_dimensions": [0.1, "abc"]}, ["x_dimensions", "list of numbers"]),
    ("Square", {"eps": 0.01, "loss": "hinge"}, ["loss", "margin, ce"]),
    ("FAB", {"eps": 0.01, "norm": "L7"}, ["norm", "L1"]),
    ("CW", {"c": float("inf")}, ["c", "finite"]),
    ("PGD", {"eps": 0.01, "alpha": float("nan")}, ["alpha"]),
    ("TIFGSM", {"eps": 0.01, "kernel_name": "box"}, ["kernel_name", "gaussian"]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_setting_the_attack_class_would_refuse_is_one_line_naming_it(attack, params, words):
    from ellbench.attacks.suite import make_entries
    from ellbench.errors import EllbenchError

    with pytest.raises(EllbenchError) as caught:
        make_entries(attack, params)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_every_torchattacks_class_builds_around_a_stand_in_model_with_its_defaults():
    # make_entries builds each class once around a one-parameter model: no class may need more than its settings.
    import torchattacks

    from ellbench.attacks.suite import NOT_FROM_SETTINGS, make_entries

    for name in torchattacks.__all__:
        cls = getattr(torchattacks, name)
        if not isinstance(cls, type) or name in NOT_FROM_SETTINGS or name in ("Attack",):
            continue
        takes_eps = "eps" in __import__("inspect").signature(cls.__init__).parameters
        make_entries(name, {"eps": 0.01} if takes_eps else {})


# --- Model and data that do not fit ------------------------------------------------------------------------------
WNIDS = ("n01440764", "n01443537")  # the first two ImageNet-1k classes
CLASSES = ("cat", "dog")  # a folder of two classes: labels 0 and 1 fit the micro models' 10 outputs


def image_folder(root: pathlib.Path, classes, *, per_class: int = 2, side: int = 40, bad: int = 0) -> pathlib.Path:
    """<root>/<class>/<i>.png, `side` px; the first `bad` files of the first class hold no image at all."""
    from PIL import Image

    for number, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            path = root / name / f"{i}.png"
            if number == 0 and i < bad:
                path.write_bytes(b"\x89PNG not really")
            else:
                Image.new("RGB", (side, side), (40 * i, 90, 30 * number)).save(path)
    return root


@pytest.fixture
def micro_checkpoint(good_checkpoint):
    """Micro weights for 8 px images, 10 classes, with their sidecar (as `ellbench train` writes them)."""
    good_checkpoint.with_suffix(".json").write_text(json.dumps({"model": MICRO, "model_kwargs": MICRO_SETTINGS}))
    return good_checkpoint


TWELVE = [f"class{i:02d}" for i in range(12)]
FIT_CASES = [  # (case, command and arguments, folder classes, words): 10-class weights for 8 px images
    ("attack on ImageNet wnids", ["attack", "--attack", "FGSM", "--param", "eps=1/255"], WNIDS,
     ["wnids", "10 outputs"]),
    ("corrupt on ImageNet wnids", ["corrupt"], WNIDS, ["wnids", "10 outputs"]),
    ("eval on 12 classes", ["eval"], TWELVE, ["12 classes", "10 outputs"]),
    ("shift with 10 outputs", ["shift", "--dataset", "imagenet-a"], ("n01498041",), ["1000-class"]),
]


@pytest.mark.parametrize("case, arguments, classes, words", FIT_CASES, ids=[case[0] for case in FIT_CASES])
def test_a_model_and_data_that_do_not_fit_are_one_line_before_any_work(run_ellbench, tmp_path, micro_checkpoint,
                                                                       case, arguments, classes, words):
    folder = image_folder(tmp_path / "images", classes, per_class=1)
    result = run_ellbench(arguments[0], MICRO, "--checkpoint", str(micro_checkpoint), "--data", str(folder),
                          "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "out"), *arguments[1:])
    assert_one_line_error(result, *words)


def test_profile_at_an_image_size_below_the_patch_is_one_line(run_ellbench, tmp_path):
    result = run_ellbench("profile", MICRO, "--img-size", "3", "--batch-size", "1", "--no-memory", "--out",
                          str(tmp_path / "out"))
    assert_one_line_error(result, "3x3", "patch size 4")


def test_an_image_size_below_the_patch_is_one_line_saying_so(tmp_path, one_thread):
    from ellbench.errors import EllbenchError
    from ellbench.tasks.inputs import TransformOverrides, open_model_and_data

    folder = image_folder(tmp_path / "images", WNIDS, per_class=1)
    with pytest.raises(EllbenchError, match=r"cannot take 8x8 images .*at least its patch size 16"):
        open_model_and_data("deit_tiny_patch16_224", str(folder), overrides=TransformOverrides(img_size=8))


def test_an_image_size_the_weights_were_not_made_for_is_one_line_saying_which(tmp_path, micro_checkpoint, one_thread):
    from ellbench.errors import EllbenchError
    from ellbench.tasks.inputs import TransformOverrides, open_model_and_data

    folder = image_folder(tmp_path / "images", CLASSES, per_class=1)
    with pytest.raises(EllbenchError, match=r"\(16, 16\), but the model requires \(8, 8\).*--img-size"):
        open_model_and_data(MICRO, str(folder), checkpoint=str(micro_checkpoint),
                            overrides=TransformOverrides(img_size=16))


# --- Unreadable images: one line naming the file, and nothing else on stderr; or skipped and counted ---------------
BAD_IMAGE_COMMANDS = {
    "attack": ["attack", "--attack", "FGSM", "--param", "eps=1/255"],
    "collapse": ["collapse"],
}


@pytest.mark.parametrize("command", ["attack"])
def test_an_unreadable_image_is_the_only_line_on_stderr(run_ellbench, tmp_path, command):
    classes = CLASSES
    folder = image_folder(tmp_path / "images", classes, bad=1)
    arguments = BAD_IMAGE_COMMANDS[command]
    result = run_ellbench(arguments[0], MICRO, *arguments[1:], "--data", str(folder), "--batch-size", "2",
                          "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, str(folder / classes[0] / "0.png"), "--skip-bad-images")


@pytest.mark.parametrize("command", ["collapse", "shift"])
def test_skipped_images_are_counted_in_the_table_and_the_json(run_ellbench, tmp_path, command):
    if command == "shift":  # ImageNet-A needs a 1000-class model: DeiT-Tiny, built for 32 px to stay cheap
        folder = image_folder(tmp_path / "images", ("n01498041", "n01531178"), bad=1)
        arguments = ["shift", "deit_tiny_patch16_224", "--dataset", "imagenet-a", "--img-size", "32"]
    else:
        folder = image_folder(tmp_path / "images", CLASSES, bad=1)
        arguments = ["collapse", MICRO]
    arguments += ["--data", str(folder), "--skip-bad-images", "--workers", "0", "--device", "cpu", "--out",
                  str(tmp_path / "out")]
    if command == "shift":  # the table's note here, the JSON field for collapse: one process each
        table = run_ellbench(*arguments)
        assert table.returncode == 0, table.stderr[-2000:]
        assert "note: 1 unreadable images were skipped (--skip-bad-images)" in table.stdout
    else:
        as_json = run_ellbench(*arguments, "--json")
        assert as_json.returncode == 0, as_json.stderr[-2000:]
        assert json.loads(as_json.stdout)["skipped_images"] == 1


# --- Damaged stores, malicious pickles through eval ------------------------------------------------------------------
@pytest.mark.parametrize("command", [["report"]], ids=["report"])
def test_a_store_that_is_not_a_database_is_one_line(run_ellbench, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ellbench.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    result = run_ellbench(*command, "--out", str(out))
    assert_one_line_error(result, str(out / "ellbench.sqlite"), "damaged")



# --- Faults: out of memory, a failing generation worker, a full disk while writing a report -----------------------
@pytest.mark.parametrize("command, error, lower", [
    ("profile", "cuda", "--batch-size or --img-size"),
    ("report", "cpu", "--resamples"),
    ("train", "python", "--batch-size"),
])
def test_running_out_of_memory_anywhere_is_one_line_saying_what_to_lower(monkeypatch, capsys, command, error, lower):
    import sys

    from ellbench import cli

    raised = {"cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
              "cpu": RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                                  "you tried to allocate 1099511627776 bytes."),
              "python": MemoryError()}[error]

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "_single_process", fail)  # the first step of train, profile and report
    monkeypatch.setattr(sys, "argv", ["ellbench", command, MICRO] if command != "report" else ["ellbench", command])
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory") and f"lower {lower}" in lines[0], lines


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_generation_worker_is_one_line_naming_the_image_and_the_corruption(tmp_path, monkeypatch, workers):
    from PIL import Image

    from ellbench.corruptions import imagenet_c
    from ellbench.errors import EllbenchError

    sources = []
    for i in range(2):
        sources.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 40), (10 * i, 20, 30)).save(sources[-1])

    def broken_corruption(*args, **kwargs):
        raise ValueError("the corruption code broke\nsecond line")

    monkeypatch.setattr(imagenet_c, "corrupt_image", broken_corruption)  # forked workers inherit it
    with pytest.raises(EllbenchError) as caught:
        imagenet_c.generate_cached(sources, imagenet_c.GenerationSettings("fog", 2), tmp_path / "cache",
                                   workers=workers)
    message = str(caught.value)
    assert "fog severity 2" in message and any(str(s) in message for s in sources), message
    assert "the corruption code broke" in message and "second line" not in message


def test_a_full_disk_while_writing_a_report_leaves_the_previous_set_unchanged(tmp_path, monkeypatch):
    import builtins
    import errno

    from ellbench.errors import EllbenchError
    from ellbench.report.build import write_file_set

    write_file_set(tmp_path, {"results.csv": b"old csv", "results.md": b"old md"})
    real_open, opened = builtins.open, []

    def open_until_full(path, *args, **kwargs):
        opened.append(path)
        if len(opened) == 2:  # the second file of the new set finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_until_full)
    with pytest.raises(EllbenchError, match="No space left on device.*unchanged"):
        write_file_set(tmp_path, {"results.csv": b"new csv", "results.md": b"new md"})
    monkeypatch.setattr(builtins, "open", real_open)
    assert (tmp_path / "results.csv").read_bytes() == b"old csv" and (tmp_path / "results.md").read_bytes() == b"old md"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.md"]  # no staging folder left


def test_a_full_disk_at_start_leaves_no_write_test_file(tmp_path, monkeypatch):
    import errno

    from ellbench.errors import EllbenchError
    from ellbench.io import ensure_writable_dir

    def write_half_then_fail(self, *args, **kwargs):
        self.touch()  # the file exists, its content did not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", write_half_then_fail)
    with pytest.raises(EllbenchError, match="not writable: No space left on device"):
        ensure_writable_dir(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_long_attack_moves_the_progress_bar_within_its_batch(one_thread):
    from ellbench.attacks.suite import make_entries
    from ellbench.models.factory import build_model
    from ellbench.runner import Batch
    from ellbench.tasks.attack import attack_evaluator

    model = build_model(MICRO, **MICRO_SETTINGS)
    entry = make_entries("PGD", {"eps": 0.01, "steps": 6})[0]
    fractions = []
    batch = Batch(0, torch.arange(2), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), progress=fractions.append)
    attack_evaluator(model, entry, seed=0)(batch)
    # the clean pass, 6 steps and the final pass: 8 forward passes of the network, each reported as a fraction
    assert fractions == pytest.approx([i / 8 for i in range(1, 9)])
    assert not model.model._forward_hooks  # the counting hook is gone after the batch
