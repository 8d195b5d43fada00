"""Reference tables (reports/reference/): logged numbers of other repositories, put beside ellbench's numbers only
when model, metric, attack, eps and protocol agree."""

from __future__ import annotations

import json
import math

# The reference logs' attack protocol (reports/reference/README.md): attack settings that must agree.
REFERENCE_ATTACK_SETTINGS = {
    "PGD": {"steps": 20, "alpha_per_eps": 0.15},
    "FGSM": {},
    "SPSA": {"nb_iter": 40, "lr": 0.01, "delta": 0.01, "nb_sample": 128},
    "SPSA-cleverhans": {"nb_iter": 40, "lr": 0.01, "delta": 0.01, "nb_sample": 128, "spsa_iters": 1},
}
# Said wherever either SPSA appears, so nobody mistakes one for the other.
SPSA_NOTE = ("SPSA is torchattacks' (gradient estimated around the current iterate); SPSA-cleverhans is the paper's "
             "code as it ran (cleverhans/torch/attacks/spsa.py, _compute_spsa_gradient: estimated around 2z, z the "
             "normalised image); the official logs' SPSA numbers compare with SPSA-cleverhans only")
BUILTIN_DATA = ("digits", "fashion-mnist")
SMALL_IMAGE_NOTE = ("Small-image models (micro, built-in 8-32 px data sets) never match the reference tables, which "
                    "are ImageNet-1k numbers at 224 px")


def load_reference():
    """All shipped reference rows (reports/reference/*.csv) with the file each came from."""
    import pandas as pd

    from ellbench.resources import resource_dir

    frames = [pd.read_csv(path).assign(file=path.name) for path in sorted(resource_dir("reference").glob("*.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def is_small_image(row) -> bool:
    """A result of a small-image model or on a built-in small-image data set: never comparable with ImageNet logs."""
    return "micro" in row["model"] or row["model"].endswith("_32") or row["data_name"] in BUILTIN_DATA


def _protocol_difference(row) -> str | None:
    """Why an ellbench attack result is not measured like the reference logs, or None when it is."""
    settings = json.loads(row["settings"])
    if settings.get("protocol") != "paper":
        return f"ellbench protocol {settings.get('protocol')!r}, reference protocol 'paper' (normalised space)"
    wanted = REFERENCE_ATTACK_SETTINGS.get(settings.get("attack"))
    if wanted is None:
        return f"no reference protocol for {settings.get('attack')}"
    params, eps = settings.get("params", {}), settings.get("eps") or 0.0
    for key, value in wanted.items():
        if key == "alpha_per_eps":
            actual = params.get("alpha", float("nan")) / eps if eps else float("nan")
        else:
            actual = params.get(key)
        if actual is None or not math.isclose(float(actual), value, rel_tol=1e-6):
            return f"{key} {actual} here, {value} in the reference protocol"
    return None


def reference_comparison(long):
    """Per ellbench clean/attack result of a model the reference tables name: the reference numbers and the verdict.

    Returns (frame, notes). Accuracies are in percent in this table, as the reference logs give them.
    """
    import pandas as pd

    reference = load_reference()
    rows, notes = [], []
    candidates = long[(long["table"] == "main") & long["task"].isin(["clean", "attack"])]
    small = candidates[candidates.apply(is_small_image, axis=1)] if len(candidates) else candidates
    if len(small):
        notes.append(f"{SMALL_IMAGE_NOTE} ({', '.join(sorted(set(small['model'])))}).")
    unnamed = set()
    for _, row in candidates.drop(index=small.index).iterrows():
        metric = "top5" if row["metric"] in ("top5_accuracy", "robust_top5_accuracy") else "top1"
        same_model = reference[(reference["model"] == row["model"]) & (reference["metric"] == metric)]
        if same_model.empty:
            unnamed.add(row["model"])
            continue
        attack = "clean" if row["task"] == "clean" else row["attack"]
        if attack == "clean":
            same = same_model[same_model["attack"] == "clean"]
        else:
            same = same_model[(same_model["attack"] == attack)
                              & same_model["eps"].apply(lambda e, x=row["eps"]: _same_eps(e, x))]
        # rows logged under another protocol (e.g. 'unclear') are compared with nothing
        other = same[same["protocol"] != attack_protocol(attack)]
        same = same[same["protocol"] == attack_protocol(attack)]
        if same.empty:
            verdict = f"no match: only rows of protocol {', '.join(sorted(set(other['protocol'])))}" if len(other) \
                else None
        elif attack == "clean":
            verdict = "match (assumes the data is the ImageNet-1k validation set)"
        else:
            difference = _protocol_difference(row)
            verdict = f"protocol differs: {difference}" if difference else "match"
        if verdict and len(other) and len(same):
            verdict += f" ({len(other)} reference row(s) of another protocol left out)"
        rows.append({"model": row["model"], "checkpoint": row["checkpoint"], "metric": row["label"],
                     "ellbench_pct": 100.0 * float(row["value"]),
                     "reference_pct": "; ".join(f"{v:.2f}" for v in same["value"]) if len(same) else "",
                     "status": verdict or "no match: no reference number for this attack and eps",
                     "reference_source": "; ".join(same["source"]) if len(same) else "", "job_id": row["job_id"]})
    if unnamed:
        notes.append(f"No reference numbers for {', '.join(sorted(unnamed))}.")
    return pd.DataFrame(rows, columns=["model", "checkpoint", "metric", "ellbench_pct", "reference_pct", "status",
                                       "reference_source", "job_id"]), notes


def attack_protocol(attack: str) -> str:
    """The reference tables' protocol name for a clean result or an attack of ellbench's paper protocol."""
    return "clean" if attack == "clean" else "paper"


def _same_eps(reference_eps, eps) -> bool:
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return False
    return reference_eps == reference_eps and math.isclose(float(reference_eps), float(eps), rel_tol=1e-6)
