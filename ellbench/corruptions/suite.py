"""Corruption suites (corruptions/*.toml): which corruptions, at which severities, against which AlexNet baseline,
computed by which backend.

The schema is strict, like attack suites': only the keys below, each of its type; anything else is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ellbench.corruptions.mce import BASELINES
from ellbench.corruptions.names import BACKENDS, DEFAULT_BACKEND, check_corruption
from ellbench.errors import EllbenchError
from ellbench.resources import read_suite

SUITE_KEYS = {"description": "text", "corruptions": "a list of corruption names",
              "severities": "a list of integers 1-5", "baseline": f"one of {', '.join(BASELINES)}",
              "backend": f"one of {', '.join(BACKENDS)} (default {DEFAULT_BACKEND})"}


@dataclass(frozen=True)
class CorruptionSuite:
    """A named list of corruptions run at the same severities, the AlexNet baseline its mCE uses, and the backend
    that corrupts generated images (`corrupt --corruption-backend` overrides it)."""

    name: str
    description: str
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    baseline: str = "hendrycks"
    source: str = ""
    backend: str = DEFAULT_BACKEND

    def entries(self) -> list[tuple[str, int]]:
        """(corruption, severity) pairs, corruption-major."""
        return [(c, s) for c in self.corruptions for s in self.severities]


def load_suite(name_or_path: str | Path) -> CorruptionSuite:
    """A shipped suite by name ('imagenet-c', 'imagenet-c-extra', 'quick', 'study') or a TOML file path."""
    path, data = read_suite("corruptions", name_or_path)
    where = f"corruption suite {path}"
    unknown = sorted(set(data) - set(SUITE_KEYS))
    if unknown:
        raise EllbenchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(SUITE_KEYS)}")
    corruptions, severities = data.get("corruptions"), data.get("severities")
    description, baseline = data.get("description", ""), data.get("baseline", "hendrycks")
    backend = data.get("backend", DEFAULT_BACKEND)
    if not isinstance(corruptions, list) or not corruptions or not all(isinstance(c, str) for c in corruptions):
        raise EllbenchError(f"{where}: corruptions must be {SUITE_KEYS['corruptions']}, e.g. [\"fog\", \"contrast\"]")
    if not isinstance(severities, list) or not severities \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in severities):
        raise EllbenchError(f"{where}: severities must be {SUITE_KEYS['severities']}, e.g. [1, 3, 5]")
    if not isinstance(description, str):
        raise EllbenchError(f"{where}: description must be text")
    if baseline not in BASELINES:
        raise EllbenchError(f"{where}: unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if backend not in BACKENDS:
        raise EllbenchError(f"{where}: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for repeated, what in ((corruptions, "corruption"), (severities, "severity")):
        twice = sorted({str(v) for v in repeated if repeated.count(v) > 1})
        if twice:
            raise EllbenchError(f"{where}: {what} {twice[0]} is listed twice")
    for corruption in corruptions:
        for severity in severities:
            check_corruption(corruption, severity)
    return CorruptionSuite(name=path.stem, description=description, corruptions=tuple(corruptions),
                           severities=tuple(severities), baseline=baseline, source=str(path),
                           backend=backend)
