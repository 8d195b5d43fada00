"""Pure arithmetic over attack results: budget text, per-job summaries and trust checks (no torch, no torchattacks)."""

from __future__ import annotations

# A perturbation is within its budget when linf <= eps * (1 + rtol) + atol: float32 rounding of the inputs, no more.
BUDGET_RTOL = 1e-4
BUDGET_ATOL = 1e-6


def format_eps(eps: float | None) -> str:
    """'4/255' when eps is a whole number of 255ths, else the shortest float text; '-' for no budget."""
    if eps is None:
        return "-"
    steps = eps * 255
    if abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:g}"


def within_budget(linf: float, eps: float) -> bool:
    """Whether a perturbation of size `linf` keeps to the budget `eps` (up to float32 rounding)."""
    return linf <= eps * (1 + BUDGET_RTOL) + BUDGET_ATOL


def summarize_attack(frame) -> dict:
    """Summary of one attack job's outcomes (a DataFrame with the attack task's columns).

    `robust_accuracy` is the paper's measure (adversarial prediction == true label over all examples);
    `robust_of_clean_correct` is AutoAttack's (correct both clean and adversarially); `robust_top5_accuracy` (when
    the rows have a top5 column) counts the label among the adversarial top-5 classes.
    """
    n = int(len(frame))
    if n == 0:
        return {"n": 0}
    correct = frame["correct"].astype(bool)
    clean = frame["clean_correct"].astype(bool)
    top5 = {"robust_top5_accuracy": float(frame["top5"].astype(float).mean())} if "top5" in frame else {}
    return {
        "n": n,
        "accuracy": float(correct.mean()),
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float(correct.mean()),
        "robust_of_clean_correct": float((correct & clean).mean()),
        "max_linf": float(frame["linf"].max()),
        "mean_linf": float(frame["linf"].mean()),
        "mean_l2": float(frame["l2"].mean()),
        **top5,
    }


def result_record(entry, summary: dict) -> dict:
    """What `trust_checks` reads about one finished (attack, eps) job; `entry` is an attacks.suite.AttackEntry."""
    return {"suite": entry.suite, "name": entry.name, "attack": entry.attack, "protocol": entry.protocol,
            "eps": entry.eps, "clean_accuracy": summary["clean_accuracy"],
            "robust_accuracy": summary["robust_accuracy"], "max_linf": summary["max_linf"], "n": summary["n"]}


def _check(check: str, status: str, detail: str, **where) -> dict:
    return {"check": check, "status": status, "detail": detail, **where}


def trust_checks(results: list[dict], *, tolerance: float = 0.0) -> list[dict]:
    """Checks over finished results (`result_record` dicts of one model and data set), as rows to store and show.

    Results are compared within a suite (and protocol): two suites may hold attacks of the same name and budget.

    - budget: every perturbation within eps (fail otherwise: the numbers are not for that eps);
    - robust <= clean: robust accuracy never above clean accuracy;
    - monotone in eps: for each attack, robust accuracy does not rise with eps;
    - PGD >= FGSM: at equal eps, PGD is not weaker than FGSM (a violation suggests gradient masking).
    The last three are warnings: they point at a weak attack or a masked gradient rather than a broken number.
    `tolerance` (an accuracy difference) absorbs sampling noise in the three comparisons.
    """
    checks = []
    for r in results:
        where = {"suite": r.get("suite"), "name": r["name"], "protocol": r["protocol"], "eps": r["eps"]}
        if r["eps"] is not None:
            held = within_budget(r["max_linf"], r["eps"])
            checks.append(_check("budget", "ok" if held else "fail",
                                 f"max linf {r['max_linf']:.6g} vs eps {r['eps']:.6g}", **where))
        above = r["robust_accuracy"] > r["clean_accuracy"] + tolerance
        checks.append(_check("robust<=clean", "warn" if above else "ok",
                             f"robust {r['robust_accuracy']:.4f} vs clean {r['clean_accuracy']:.4f}", **where))
    groups: dict = {}
    for r in results:
        if r["eps"] is not None:
            groups.setdefault((r.get("suite"), r["name"], r["protocol"]), []).append(r)
    for (suite, name, protocol), rows in sorted(groups.items(), key=lambda item: str(item[0])):
        rows = sorted(rows, key=lambda r: r["eps"])
        for weaker, stronger in zip(rows, rows[1:], strict=False):
            rises = stronger["robust_accuracy"] > weaker["robust_accuracy"] + tolerance
            checks.append(_check(
                "monotone-in-eps", "warn" if rises else "ok",
                f"robust {weaker['robust_accuracy']:.4f} at {format_eps(weaker['eps'])} -> "
                f"{stronger['robust_accuracy']:.4f} at {format_eps(stronger['eps'])}",
                suite=suite, name=name, protocol=protocol, eps=stronger["eps"]))
    by_budget = {(r.get("suite"), r["attack"], r["protocol"], r["eps"]): r for r in results}
    for (suite, attack, protocol, eps), pgd in sorted(by_budget.items(), key=lambda item: str(item[0])):
        fgsm = by_budget.get((suite, "FGSM", protocol, eps))
        if attack != "PGD" or fgsm is None:
            continue
        weaker = pgd["robust_accuracy"] > fgsm["robust_accuracy"] + tolerance
        checks.append(_check(
            "PGD>=FGSM", "warn" if weaker else "ok",
            ("possible gradient masking: " if weaker else "")
            + f"PGD robust {pgd['robust_accuracy']:.4f} vs FGSM {fgsm['robust_accuracy']:.4f}",
            suite=suite, name=pgd["name"], protocol=protocol, eps=eps))
    return checks
