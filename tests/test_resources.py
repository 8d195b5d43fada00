"""Shipped data files are found in a source checkout and in an installed wheel's layout."""

import importlib.util
import shutil
from pathlib import Path

import pytest

import ellbench.resources as resources
from ellbench.errors import EllbenchError

REPO = Path(__file__).resolve().parents[1]


def test_checkout_finds_the_top_level_folders():
    assert resources.resource_dir("attacks") == REPO / "attacks"
    assert resources.resource_path("corruptions", "imagenet-c.toml") == REPO / "corruptions" / "imagenet-c.toml"
    assert resources.resource_dir("reference") == REPO / "reports" / "reference"


def test_installed_layout_finds_the_package_data(tmp_path):
    # pyproject maps attacks/ to ellbench/resources/attacks/ in a wheel: build that layout by hand.
    package = tmp_path / "site" / "ellbench" / "resources"
    (package / "attacks").mkdir(parents=True)
    shutil.copy(resources.__file__, package / "__init__.py")
    (package / "attacks" / "paper.toml").write_text("description = 'x'\n")
    spec = importlib.util.spec_from_file_location("installed_resources", package / "__init__.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.resource_path("attacks", "paper.toml") == package / "attacks" / "paper.toml"


def test_missing_file_names_what_exists():
    with pytest.raises(EllbenchError, match="paper.toml"):
        resources.resource_path("attacks", "nope.toml")
    with pytest.raises(EllbenchError):
        resources.resource_dir("weights")


def test_every_package_ships_in_a_wheel():
    """pyproject lists packages one by one: a package missing there would be left out of a built wheel."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "ellbench").rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
