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


SUITE_NOUNS = {"attacks": "attack", "corruptions": "corruption"}


def list_suites(kind: str) -> list[str]:
    """Names of the shipped suites of one kind ('attacks' or 'corruptions')."""
    return sorted(path.stem for path in resource_dir(kind).glob("*.toml"))


def suite_path(kind: str, name_or_path: str | Path) -> Path:
    """A suite's file: a shipped suite by name ('paper', 'imagenet-c'), or a user's TOML file by path.

    Anything that looks like a path (a .toml ending or a folder separator) is a path; anything else a shipped name.
    """
    noun = SUITE_NOUNS[kind]
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise EllbenchError(f"{noun} suite file {text} not found")
        return path
    shipped = list_suites(kind)
    if text not in shipped:
        raise EllbenchError(f"unknown {noun} suite {text!r}; available: {', '.join(shipped)}")
    return resource_path(kind, f"{text}.toml")


def read_suite(kind: str, name_or_path: str | Path) -> tuple[Path, dict]:
    """(path, parsed TOML) of a suite, with one-line errors for unreadable, non-UTF-8 or malformed files."""
    import tomllib

    path = suite_path(kind, name_or_path)
    noun = SUITE_NOUNS[kind]
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EllbenchError(f"malformed {noun} suite {path}: {exc}") from None
    except UnicodeDecodeError:
        raise EllbenchError(f"{noun} suite {path} is not a UTF-8 text file") from None
    except OSError as exc:
        raise EllbenchError(f"cannot read {noun} suite {path}: {exc.strerror or exc}") from None
