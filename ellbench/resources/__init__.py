"""Data files that ship with ellbench: attack and corruption suites, reference tables.

In a source checkout they live at the repository's top level (attacks/, corruptions/, reports/reference/);
an installed ellbench carries them as the sub-packages of this package.
"""

from pathlib import Path

from ellbench.errors import EllbenchError

_TOP_LEVEL = {"attacks": "attacks", "corruptions": "corruptions", "reference": "reports/reference"}


def resource_dir(kind: str) -> Path:
    """Folder holding the shipped files of one kind: 'attacks', 'corruptions' or 'reference'."""
    if kind not in _TOP_LEVEL:
        raise EllbenchError(f"unknown resource kind {kind!r}")
    installed = Path(__file__).resolve().parent / kind  # ellbench/resources/<kind>/ inside a wheel
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / _TOP_LEVEL[kind]  # a source checkout (editable install)


def resource_path(kind: str, name: str) -> Path:
    """Path of one shipped file, with a one-line error naming what exists when it is missing."""
    folder = resource_dir(kind)
    path = folder / name
    if not path.is_file():
        available = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("_"))
        raise EllbenchError(f"no {kind} file {name!r}; available: {', '.join(available) or 'none'}")
    return path
