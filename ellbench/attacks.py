"""Adversarial attacks: suite files -> torchattacks objects -> per-example outcomes, under two protocols.

- ``standard`` (RobustBench / AutoAttack convention): the attack works on [0, 1] pixels, eps is in pixel units,
  the labels are the true labels, adversarial images are clipped to [0, 1].
- ``paper`` (the Elliptical Attention paper's ImageAttack/engine.py, with cleverhans): the attack works on the
  normalised input z = (x - mean) / std, eps is in those units, nothing is clipped, and the labels are the model's
  own clean predictions. Robust accuracy is still measured against the true labels.

torchattacks clamps every iterate to [0, 1]. The paper protocol therefore runs it in coordinates u with
z = offset + scale * u, where offset and scale are chosen so that every iterate around a valid image lies inside
u in [0, 1]: the clamp never binds, and the uniform budget eps / scale in u is exactly the budget eps in z. Settings
measured in input units (eps, step sizes, SPSA's delta and learning rate) are divided by scale on the way in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import nn

from ellbench.errors import EllbenchError
from ellbench.resources import resource_dir, resource_path

PROTOCOLS = ("paper", "standard")

# Attacks that keep their meaning under the paper protocol's change of coordinates (L-inf, every random draw and step
# proportional to eps or to the settings listed), with the settings that are measured in input units.
PAPER_INPUT_UNITS = {
    "FGSM": ("eps",),
    "PGD": ("eps", "alpha"),
    "BIM": ("eps", "alpha"),
    "RFGSM": ("eps", "alpha"),
    "FFGSM": ("eps", "alpha"),
    "MIFGSM": ("eps", "alpha"),
    "NIFGSM": ("eps", "alpha"),
    "VMIFGSM": ("eps", "alpha"),
    "VNIFGSM": ("eps", "alpha"),
    "EOTPGD": ("eps", "alpha"),
    "UPGD": ("eps", "alpha"),
    "APGD": ("eps",),
    "APGDT": ("eps",),
    "Square": ("eps",),
    "SPSA": ("eps", "delta", "lr"),
}
# Settings that count iterations or samples: a zero would silently return the clean image.
COUNT_SETTINGS = {"steps", "nb_iter", "nb_sample", "max_batch_size", "n_restarts", "n_queries", "eot_iter",
                  "max_iterations", "num_iter_set", "binary_search_steps"}
POSITIVE_SETTINGS = {"alpha", "delta", "lr"}
WHOLE_NUMBER_SETTINGS = COUNT_SETTINGS | {"seed", "n_classes", "pixels", "popsize", "inf_batch", "restarts", "N", "m",
                                          "len_kernel"}
# torchattacks classes that cannot be built from keyword settings alone (they need other attacks or a train loader).
NOT_FROM_SETTINGS = {"MultiAttack", "LGV"}
SUITE_KEYS = {"description", "protocol", "eps", "attacks"}
ATTACK_KEYS = {"class", "name", "protocol", "eps", "params", "per_eps"}
# A perturbation is within its budget when linf <= eps * (1 + rtol) + atol: float32 rounding of the inputs, no more.
BUDGET_RTOL = 1e-4
BUDGET_ATOL = 1e-6


@dataclasses.dataclass(frozen=True)
class PerEps:
    """A setting given as a multiple of eps, e.g. the paper's PGD step 0.15 eps (written `0.15*eps`)."""

    factor: float


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack at one budget: a torchattacks class, its settings in the protocol's units, and the protocol."""

    name: str
    attack: str
    protocol: str
    eps: float | None
    params: dict = dataclasses.field(default_factory=dict)
    suite: str | None = None

    @property
    def eps_text(self) -> str:
        return format_eps(self.eps)

    @property
    def label(self) -> str:
        return self.name if self.eps is None else f"{self.name} eps={self.eps_text}"

    def kwargs(self) -> dict:
        """Keyword arguments for the torchattacks class, in the protocol's units (before any change of coordinates)."""
        return dict(self.params) if self.eps is None else {"eps": self.eps, **self.params}

    def settings(self) -> dict:
        """JSON-able description for the job key: everything that changes the outcome."""
        return {"suite": self.suite, "name": self.name, "attack": self.attack, "protocol": self.protocol,
                "eps": self.eps, "params": dict(sorted(self.params.items())),
                "torchattacks": torchattacks.__version__}


# ---------------------------------------------------------------------------------------------------------------
# Parsing: numbers, `k/255` budgets, CLI `--param key=value`, suite files.

_FRACTION = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_number(value) -> float:
    """A float from a number or a string such as '0.5', '1e-3' or '4/255'."""
    if isinstance(value, bool):
        raise EllbenchError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    match = _FRACTION.match(text)
    try:
        if match:
            numerator, denominator = float(match.group(1)), float(match.group(2))
            if denominator == 0:
                raise EllbenchError(f"division by zero in {text!r}")
            return numerator / denominator
        return float(text)
    except ValueError:
        raise EllbenchError(f"expected a number such as 0.01 or 4/255, got {text!r}") from None


def parse_eps(value) -> float:
    """A budget in [0, 1], from a number or 'k/255'."""
    eps = parse_number(value)
    if not math.isfinite(eps) or eps < 0 or eps > 1:
        raise EllbenchError(f"eps must be between 0 and 1, got {value!r}")
    return eps


def format_eps(eps: float | None) -> str:
    """'4/255' when eps is a whole number of 255ths, else the shortest float text; '-' for no budget."""
    if eps is None:
        return "-"
    steps = eps * 255
    if abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:g}"


def _parse_value(text: str):
    text = text.strip()
    if "," in text:
        return [_parse_value(part) for part in text.split(",") if part.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.replace(" ", "").endswith("*eps"):
        return PerEps(parse_number(text.replace(" ", "")[: -len("*eps")]))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return parse_number(text)
    except EllbenchError:
        return text


def parse_params(items: list[str]) -> dict:
    """`["eps=4/255", "steps=10", "alpha=0.15*eps", "random_start=false"]` -> typed keyword settings.

    Values become bool, int, float ('k/255' allowed), `PerEps` (a multiple of eps), a list (comma-separated, e.g.
    several budgets `eps=1/255,2/255`) or stay strings (e.g. `norm=Linf`).
    """
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise EllbenchError(f"--param expects key=value (e.g. eps=4/255), got {item!r}")
        if key in params:
            raise EllbenchError(f"--param {key} given twice")
        params[key] = _parse_value(value)
    return params


def attack_class(name: str) -> type:
    """The torchattacks class called `name` (case-sensitive, as torchattacks spells it)."""
    if name not in torchattacks.__all__ or name in NOT_FROM_SETTINGS:
        known = [n for n in torchattacks.__all__ if n not in NOT_FROM_SETTINGS]
        close = [n for n in known if n.lower() == str(name).lower()]
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
        raise EllbenchError(f"unknown attack {name!r}; {hint}")
    return getattr(torchattacks, name)


def _class_defaults(cls: type) -> dict:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # skip self, model
    return {p.name: p.default for p in parameters}


def _check_setting(attack: str, key: str, value, default) -> object:
    """Validate one setting against the class's default's type and ellbench's range rules; return it normalised."""
    if isinstance(value, PerEps):
        if isinstance(default, bool) or not isinstance(default, float | int):
            raise EllbenchError(f"{attack} setting {key} cannot be a multiple of eps")
        if value.factor <= 0:
            raise EllbenchError(f"{attack} setting {key} must be positive, got {value.factor}*eps")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise EllbenchError(f"{attack} setting {key} must be true or false, got {value!r}")
        return value
    if key in WHOLE_NUMBER_SETTINGS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise EllbenchError(f"{attack} setting {key} must be a whole number, got {value!r}")
    elif isinstance(default, float | int) and not isinstance(default, bool):
        value = parse_number(value) if isinstance(value, str) else value
        if not isinstance(value, float | int) or isinstance(value, bool):
            raise EllbenchError(f"{attack} setting {key} must be a number, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise EllbenchError(f"{attack} setting {key} must be text, got {value!r}")
    if key in COUNT_SETTINGS and value < 1:
        raise EllbenchError(f"{attack} setting {key} must be at least 1, got {value}")
    if key in POSITIVE_SETTINGS and not value > 0:
        raise EllbenchError(f"{attack} setting {key} must be positive, got {value}")
    return value


def make_entries(attack: str, params: dict, *, protocol: str = "standard", name: str | None = None,
                 eps=None, suite: str | None = None) -> list[AttackEntry]:
    """Validated entries, one per budget, for a torchattacks class and its keyword settings.

    `eps` (or `params['eps']`) may be one budget or a list; classes without an eps setting (CW, DeepFool, ...) take
    none and give one entry with `eps=None` (standard protocol only).
    """
    if protocol not in PROTOCOLS:
        raise EllbenchError(f"unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
    cls = attack_class(attack)
    defaults = _class_defaults(cls)
    params = dict(params)
    if "eps" in params:
        if eps is not None:
            raise EllbenchError(f"{attack}: eps given twice")
        eps = params.pop("eps")
    if protocol == "paper" and attack not in PAPER_INPUT_UNITS:
        raise EllbenchError(f"{attack} cannot run under the paper protocol (normalised space); "
                            f"use the standard protocol, or one of {', '.join(PAPER_INPUT_UNITS)}")
    if protocol == "paper" and params.get("norm", "Linf") != "Linf":
        raise EllbenchError(f"the paper protocol is L-inf only; {attack} was given norm={params['norm']!r}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise EllbenchError(f"{attack} has no setting {', '.join(unknown)}; its settings: {', '.join(defaults)}")
    checked = {key: _check_setting(attack, key, value, defaults[key]) for key, value in params.items()}
    if "eps" not in defaults:
        if eps is not None:
            raise EllbenchError(f"{attack} takes no eps budget")
        if any(isinstance(v, PerEps) for v in checked.values()):
            raise EllbenchError(f"{attack} takes no eps, so no setting can be a multiple of eps")
        return [AttackEntry(name or attack, attack, protocol, None, checked, suite)]
    if eps is None or (isinstance(eps, list) and not eps):
        raise EllbenchError(f"{attack} needs a budget, e.g. eps=4/255")
    budgets = [parse_eps(e) for e in (eps if isinstance(eps, list) else [eps])]
    if len(set(budgets)) != len(budgets):
        raise EllbenchError(f"{attack}: the same eps is listed twice")
    return [
        AttackEntry(name or attack, attack, protocol, budget,
                    {k: (v.factor * budget if isinstance(v, PerEps) else v) for k, v in checked.items()}, suite)
        for budget in budgets
    ]


def list_suites() -> list[str]:
    """Names of the suites that ship with ellbench."""
    return sorted(p.stem for p in resource_dir("attacks").glob("*.toml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A shipped suite's file by name ('paper'), or a user's TOML file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise EllbenchError(f"attack suite file {text} not found")
        return path
    if text not in list_suites():
        raise EllbenchError(f"unknown attack suite {text!r}; available: {', '.join(list_suites())}")
    return resource_path("attacks", f"{text}.toml")


def load_suite(name_or_path: str | Path) -> list[AttackEntry]:
    """Entries of a suite (a shipped name or a TOML path), one per (attack, eps), validated."""
    path = suite_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EllbenchError(f"malformed attack suite {path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EllbenchError(f"cannot read attack suite {path}: {exc}") from None
    suite = path.stem
    _no_unknown_keys(data, SUITE_KEYS, f"suite {suite}")
    attacks = data.get("attacks")
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, dict) for a in attacks):
        raise EllbenchError(f"suite {suite} needs at least one [[attacks]] table")
    entries = []
    for position, table in enumerate(attacks, start=1):
        where = f"suite {suite}, attack {position}"
        _no_unknown_keys(table, ATTACK_KEYS, where)
        if not isinstance(table.get("class"), str):
            raise EllbenchError(f"{where}: missing class = \"<torchattacks class>\"")
        params = table.get("params", {})
        per_eps = table.get("per_eps", {})
        if not isinstance(params, dict) or not isinstance(per_eps, dict):
            raise EllbenchError(f"{where}: params and per_eps must be tables")
        both = sorted(set(params) & set(per_eps))
        if both or "eps" in params or "eps" in per_eps:
            raise EllbenchError(f"{where}: {', '.join(both) or 'eps'} set twice; budgets go in eps = [...]")
        settings = {**params, **{k: PerEps(parse_number(v)) for k, v in per_eps.items()}}
        entries += make_entries(table["class"], settings, protocol=table.get("protocol", data.get("protocol", "")),
                                name=table.get("name"), eps=table.get("eps", data.get("eps")), suite=suite)
    labels = [(e.label, e.protocol) for e in entries]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise EllbenchError(f"suite {suite} lists {repeated[0][0]} ({repeated[0][1]}) twice; give the attacks "
                            "distinct names")
    return entries


def _no_unknown_keys(table: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise EllbenchError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


# ---------------------------------------------------------------------------------------------------------------
# Running an attack on a batch.


class AffineInput(nn.Module):
    """The raw network evaluated at z = offset + scale * u, so that torchattacks can attack u in [0, 1]."""

    def __init__(self, network: nn.Module, offset: float, scale: float):
        super().__init__()
        self.network = network
        self.offset = offset
        self.scale = scale

    def forward(self, u):
        return self.network(self.offset + self.scale * u)


def paper_coordinates(mean, std, margin: float) -> tuple[float, float]:
    """(offset, scale) such that z = offset + scale * u maps every z within `margin` of a [0, 1] image into [0, 1].

    torchattacks clamps its iterates after projecting them to the eps ball, or after a random start of at most eps
    plus at most one step, so a margin of eps + max(eps, step) keeps the clamp from ever binding.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(std, dtype=torch.float64).flatten()
    lowest = float((-mean / std).min())
    highest = float(((1 - mean) / std).max())
    return lowest - margin, highest - lowest + 2 * margin


@dataclasses.dataclass
class AttackOutcome:
    """One attacked batch, in the protocol's space (pixels for standard, normalised z for paper)."""

    clean_pred: torch.Tensor  # [B]
    target: torch.Tensor  # [B] the labels the attack worked against
    clean_input: torch.Tensor  # [B, C, H, W] what the network's input was for the clean image
    adversarial_input: torch.Tensor  # [B, C, H, W]
    logits: torch.Tensor  # [B, classes] on the adversarial input


def make_attack(model: nn.Module, entry: AttackEntry) -> Callable:
    """attack(images in [0, 1], labels) -> AttackOutcome; `model` takes [0, 1] images and has .mean, .std, .model.

    No seeding here: the caller decides the random state (see `make_attack_evaluator`).
    """
    cls = attack_class(entry.attack)
    kwargs = entry.kwargs()
    if entry.protocol == "paper":
        margin = entry.eps + max(entry.eps, entry.params.get("alpha", 0.0))
        offset, scale = paper_coordinates(model.mean, model.std, margin)
        # Evaluation mode: torchattacks restores the mode it found after each attack, and a training-mode wrapper
        # would switch the network's BatchNorm/dropout (RVT) to training behaviour for good.
        attacked = AffineInput(model.model, offset, scale).eval()
        units = PAPER_INPUT_UNITS[entry.attack]
        kwargs = {k: (v / scale if k in units else v) for k, v in kwargs.items()}
    else:
        attacked = model
    attack = cls(attacked, **kwargs)

    def run(images: torch.Tensor, labels: torch.Tensor) -> AttackOutcome:
        with torch.no_grad():
            clean_pred = model(images).argmax(1)
        if entry.protocol == "paper":
            z = (images - model.mean) / model.std
            u_adv = attack((z - offset) / scale, clean_pred)
            z_adv = offset + scale * u_adv
            with torch.no_grad():
                logits = attacked(u_adv)
            return AttackOutcome(clean_pred, clean_pred, z, z_adv, logits)
        adv = attack(images, labels)
        with torch.no_grad():
            logits = model(adv)
        return AttackOutcome(clean_pred, labels, images, adv, logits)

    return run


def batch_seed(seed: int, first_index: int) -> int:
    """The random seed of the batch starting at example `first_index`: the same batch gets the same draws on resume."""
    digest = hashlib.blake2b(f"ellbench-attack:{int(seed)}:{int(first_index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int):
    """Seed torch's global generator (and the device's) inside the block, restoring the outer state afterwards.

    torchattacks draws random starts from the global generator, so this is how a batch's draws are made repeatable
    without touching anyone else's random state.
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise EllbenchError(f"attacks take image batches [B, C, H, W], got shape {tuple(images.shape)}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise EllbenchError(f"attacks take images in [0, 1]; this batch spans [{low:.3g}, {high:.3g}]")


def make_attack_evaluator(model: nn.Module, entry: AttackEntry, *, seed: int) -> Callable:
    """evaluate_batch(indices, images, labels) -> one row per example, for ellbench.runner.run_job.

    Rows: idx, label, pred (adversarial prediction), correct (pred == label), clean_pred, clean_correct, target
    (the label attacked), linf and l2 (the perturbation's size in the protocol's space). The batch's random state
    comes from (seed, first index of the batch), so a resumed run reproduces an uninterrupted one. The model is put
    in eval mode.
    """
    model.eval()
    device = next(model.parameters()).device
    run = make_attack(model, entry)

    def evaluate_batch(indices: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        _check_images(images)
        images, labels = images.to(device), labels.to(device)
        with seeded_rng(device, batch_seed(seed, int(indices[0]))):
            outcome = run(images, labels)
        perturbation = (outcome.adversarial_input - outcome.clean_input).detach().flatten(1).double()  # [B, C*H*W]
        linf = perturbation.abs().amax(1).tolist()
        l2 = perturbation.norm(dim=1).tolist()
        pred = outcome.logits.argmax(1)
        columns = zip(indices.tolist(), labels.tolist(), pred.tolist(), outcome.clean_pred.tolist(),
                      outcome.target.tolist(), linf, l2, strict=True)
        return [
            {"idx": int(i), "label": int(y), "pred": int(p), "correct": int(p == y), "clean_pred": int(c),
             "clean_correct": int(c == y), "target": int(t), "linf": float(li), "l2": float(l2_)}
            for i, y, p, c, t, li, l2_ in columns
        ]

    return evaluate_batch


# ---------------------------------------------------------------------------------------------------------------
# Summaries and trust checks.


def summarize_attack(frame) -> dict:
    """Summary of one attack job's outcomes (a DataFrame with the evaluator's columns), for run_job(summarize=...).

    `robust_accuracy` is the paper's measure (adversarial prediction == true label over all examples);
    `robust_of_clean_correct` is AutoAttack's (correct both clean and adversarially).
    """
    n = int(len(frame))
    if n == 0:
        return {"n": 0}
    correct = frame["correct"].astype(bool)
    clean = frame["clean_correct"].astype(bool)
    return {
        "n": n,
        "accuracy": float(correct.mean()),
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float(correct.mean()),
        "robust_of_clean_correct": float((correct & clean).mean()),
        "max_linf": float(frame["linf"].max()),
        "mean_linf": float(frame["linf"].mean()),
        "mean_l2": float(frame["l2"].mean()),
    }


def result_record(entry: AttackEntry, summary: dict) -> dict:
    """What `trust_checks` reads about one finished (attack, eps) job."""
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
            bound = r["eps"] * (1 + BUDGET_RTOL) + BUDGET_ATOL
            held = r["max_linf"] <= bound
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


# ---------------------------------------------------------------------------------------------------------------
# The entry point the CLI calls.


def attack_task_settings(entry: AttackEntry, batch_size: int) -> dict:
    """Job-key settings of one attack job; the batch size is part of it because random draws are made per batch."""
    return {**entry.settings(), "batch_size": int(batch_size)}


def run_attack_suite(store, loaded, dataset, entries: list[AttackEntry], *, batch_size: int, seed: int = 0,
                     progress: bool = True) -> dict:
    """Run (or resume, or reuse) one 'attack' job per entry, then record the trust checks over their results.

    `loaded` is an `ellbench.evaluate.LoadedModel`. Returns {"jobs": [job rows], "checks": [check rows]}; the checks
    are stored as one 'attack-checks' result keyed by the jobs they read, so a report finds them next to the jobs.
    """
    from ellbench import distributed
    from ellbench.runner import job_key, provenance, run_job

    jobs, results = [], []
    for entry in entries:
        key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task="attack",
                      settings=attack_task_settings(entry, batch_size), seed=seed)
        job = run_job(store, key, dataset, make_attack_evaluator(loaded.module, entry, seed=seed),
                      batch_size=batch_size, description=f"{entry.label} ({entry.protocol}) {loaded.name}",
                      summarize=summarize_attack, progress=progress, device=loaded.device)
        jobs.append(job)
        if job and job.get("summary"):
            results.append(result_record(entry, job["summary"]))
    checks = trust_checks(results)
    if distributed.is_writer() and jobs:
        key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint,
                      task="attack-checks", settings={"jobs": sorted(job["id"] for job in jobs)}, seed=seed)
        summary = {"checks": checks, "fail": sum(c["status"] == "fail" for c in checks),
                   "warn": sum(c["status"] == "warn" for c in checks)}
        store.record_result(key, summary, provenance(loaded.device))
    return {"jobs": jobs, "checks": checks}
