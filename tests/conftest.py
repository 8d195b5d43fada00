"""Shared test fixtures: an offline environment and a way to run the real `ellbench` console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Never let timm wait on the hub; set before any test imports timm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: without one they are skipped, with the reason shown."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in cuda_tests:
        item.add_marker(skip)


def ellbench_command() -> list[str]:
    """The installed console script next to this interpreter, or `python -m ellbench` when there is none."""
    script = Path(sys.executable).with_name("ellbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ellbench"]


@pytest.fixture
def subprocess_env(tmp_path) -> dict:
    """Environment for child processes: offline, one thread each (the test machine is shared), outputs in tmp_path."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ELLBENCH_OUT=str(tmp_path / "default-out"),
               PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


@pytest.fixture
def run_ellbench(subprocess_env, tmp_path):
    """Run `ellbench ARGS...` in a subprocess (cwd tmp_path); returns the CompletedProcess with text output."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*ellbench_command(), *args], capture_output=True, text=True, env=subprocess_env,
                              cwd=tmp_path, timeout=timeout, check=False)

    return run


@pytest.fixture
def one_thread():
    """torch on one thread for the test: on a shared, busy machine two spinning threads are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HEAVY_MODULES = ("torch", "timm", "torchattacks", "pandas", "matplotlib", "imagecorruptions", "sklearn")


@pytest.fixture
def light_env(subprocess_env, tmp_path):
    """Child environment where importing any heavy package fails at once: an answer given there came before them."""
    poison = tmp_path / "heavy-imports-fail"
    for name in HEAVY_MODULES:
        (poison / name).mkdir(parents=True, exist_ok=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('heavy import of {name}')\n")
    subprocess_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(poison), subprocess_env.get("PYTHONPATH")]))
    return subprocess_env
