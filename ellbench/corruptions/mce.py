"""CE, mCE and relative mCE against AlexNet (Hendrycks & Dietterich, ICLR 2019, section 3); pure.

  CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}                   mCE = mean over the 15 common c of CE_c
  relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ellbench.corruptions.names import COMMON_CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES, check_corruption
from ellbench.errors import EllbenchError
from ellbench.resources import resource_path

BASELINES = ("hendrycks", "robustbench")
RELATIVE_MCE_NOTE = ("AlexNet's clean error 0.4348 is unverified against a primary source "
                     "(reports/reference/README.md): relative mCE depends on it")
BASELINE_SOURCES = {
    "hendrycks": "Hendrycks & Dietterich ImageNet-C AlexNet errors (hendrycks/robustness README table, 50k val); "
                 "clean error 0.4348 unverified (google-research/robustness_metrics, citing the paper's App. C)",
    "robustbench": "RobustBench's AlexNet re-run on its fixed 5k ImageNet subset (torchvision weights)",
}


@dataclass(frozen=True)
class AlexNetBaseline:
    """AlexNet top-1 errors that CE and mCE are relative to."""

    name: str
    mean_error: dict[str, float]  # corruption -> error averaged over severities 1..5
    severity_error: dict[tuple[str, int], float] = field(default_factory=dict)  # where published
    clean_error: float = math.nan

    def record(self) -> dict:
        """What a result stores so the baseline it was computed against is known."""
        return {"name": self.name, "source": BASELINE_SOURCES[self.name], "clean_error": self.clean_error,
                "file": "corruptions/alexnet_errors.csv"}

    def error(self, corruption: str, severities: Iterable[int]) -> float:
        """AlexNet's error on `corruption` averaged over `severities`."""
        severities = sorted(set(severities))
        if corruption not in self.mean_error:
            raise EllbenchError(f"the {self.name} AlexNet baseline has no error for {corruption}")
        if severities == list(SEVERITIES):
            return self.mean_error[corruption]
        missing = [s for s in severities if (corruption, s) not in self.severity_error]
        if missing:
            raise EllbenchError(f"the {self.name} AlexNet baseline has no per-severity errors for {corruption}; "
                                f"its CE needs all 5 severities")
        return sum(self.severity_error[corruption, s] for s in severities) / len(severities)


def alexnet_baseline(name: str = "hendrycks") -> AlexNetBaseline:
    """The AlexNet errors shipped in corruptions/alexnet_errors.csv, by baseline name."""
    if name not in BASELINES:
        raise EllbenchError(f"unknown AlexNet baseline {name!r}; choose one of {', '.join(BASELINES)}")
    with open(resource_path("corruptions", "alexnet_errors.csv"), newline="") as handle:
        rows = {row["corruption"]: row for row in csv.DictReader(handle)}
    clean = rows.pop("clean")
    mean_column = "hendrycks_alexnet_mean_err" if name == "hendrycks" else "robustbench_alexnet_mean_err"
    mean_error = {c: float(r[mean_column]) for c, r in rows.items() if r[mean_column]}
    severity_error = {}
    for corruption, row in rows.items():
        for s in SEVERITIES:
            if name == "hendrycks" and row[f"hendrycks_err_s{s}"]:
                severity_error[corruption, s] = float(row[f"hendrycks_err_s{s}"])
            elif name == "robustbench" and row[f"robustbench_alexnet_acc_s{s}"]:
                severity_error[corruption, s] = 1.0 - float(row[f"robustbench_alexnet_acc_s{s}"])
    return AlexNetBaseline(name, mean_error, severity_error, float(clean[mean_column]))


def _by_corruption(errors: Mapping[tuple[str, int], float]) -> dict[str, dict[int, float]]:
    grouped: dict[str, dict[int, float]] = {}
    for (corruption, severity), error in errors.items():
        check_corruption(corruption, severity)
        grouped.setdefault(corruption, {})[severity] = float(error)
    return grouped


def corruption_errors(errors: Mapping[tuple[str, int], float], baseline: AlexNetBaseline) -> dict[str, float]:
    """CE per corruption from top-1 error rates keyed by (corruption, severity), over the severities given."""
    return {c: (sum(by_s.values()) / len(by_s)) / baseline.error(c, by_s) for c, by_s in _by_corruption(errors).items()}


def relative_corruption_errors(errors: Mapping[tuple[str, int], float], clean_error: float,
                               baseline: AlexNetBaseline) -> dict[str, float]:
    """Relative CE per corruption: degradation from clean error, relative to AlexNet's degradation."""
    return {
        c: (sum(by_s.values()) / len(by_s) - clean_error) / (baseline.error(c, by_s) - baseline.clean_error)
        for c, by_s in _by_corruption(errors).items()
    }


def summarize_corruptions(errors: Mapping[tuple[str, int], float], *, clean_error: float | None = None,
                          baseline: str = "hendrycks") -> dict:
    """CE, mCE and (with a clean error) relative CE and relative mCE, with the baseline recorded.

    `errors` maps (corruption, severity) to top-1 error. mCE averages the common corruptions present;
    `mce_complete` is True only when all 15 were measured at all 5 severities (the number papers report).
    The extra corruptions, when present, get their own `extra_mce`.
    Corruptions the baseline cannot score at the measured severities are listed in `ce_unavailable` with the
    reason. CE and mCE are fractions (AlexNet = 1); papers print them x 100.
    """
    reference = alexnet_baseline(baseline)
    grouped = _by_corruption(errors)
    scorable, unavailable = {}, {}
    for corruption, by_severity in grouped.items():
        try:
            reference.error(corruption, by_severity)
        except EllbenchError as exc:
            unavailable[corruption] = str(exc)
            continue
        scorable.update({(corruption, s): e for s, e in by_severity.items()})
    ce = corruption_errors(scorable, reference)
    common = [c for c in COMMON_CORRUPTIONS if c in ce]
    extra = [c for c in EXTRA_CORRUPTIONS if c in ce]
    summary = {
        "baseline": reference.record(),
        "ce": ce,
        "ce_unavailable": unavailable,
        "mce": _mean(ce[c] for c in common),
        "mce_corruptions": common,
        "mce_complete": common == list(COMMON_CORRUPTIONS)
        and all(sorted(grouped[c]) == list(SEVERITIES) for c in common),
        "mean_error": _mean(errors.values()),  # the unnormalised mean error: NOT mCE
    }
    if extra:
        summary.update(extra_mce=_mean(ce[c] for c in extra), extra_corruptions=extra,
                       extra_mce_note="AlexNet errors of the 4 extra corruptions: the AlexNet table of "
                                      "hendrycks/robustness's README (a version since removed; see "
                                      "reports/reference/README.md)")
    if clean_error is not None:
        relative = relative_corruption_errors(scorable, clean_error, reference)
        summary.update(clean_error=clean_error, relative_ce=relative, relative_mce=_mean(relative[c] for c in common),
                       relative_mce_note=RELATIVE_MCE_NOTE)
        if extra:
            summary["extra_relative_mce"] = _mean(relative[c] for c in extra)
    return summary


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
