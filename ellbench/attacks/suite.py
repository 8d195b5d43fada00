"""Attack suites: entries (one torchattacks class at one budget, under one protocol) parsed from `--param` settings
or from suite files (attacks/*.toml), validated against the attack class's own settings before anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import math
import re
from pathlib import Path

from ellbench.attacks.checks import format_eps
from ellbench.errors import EllbenchError
from ellbench.resources import read_suite

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
# ellbench's own attacks, by the name suites use; they run on the normalised input z itself (paper protocol only).
ELLBENCH_ATTACKS = {"SPSA-cleverhans": "ellbench.attacks.spsa_cleverhans"}
PAPER_NATIVE = set(ELLBENCH_ATTACKS)
# Settings that count iterations or samples: a zero would silently return the clean image.
COUNT_SETTINGS = {"steps", "nb_iter", "nb_sample", "max_batch_size", "n_restarts", "n_queries", "eot_iter",
                  "max_iterations", "num_iter_set", "binary_search_steps", "spsa_iters"}
# Constructor arguments that are objects, not settings a suite or --param can give.
NOT_SETTINGS = {"generator"}
POSITIVE_SETTINGS = {"alpha", "delta", "lr"}
WHOLE_NUMBER_SETTINGS = COUNT_SETTINGS | {"seed", "n_classes", "pixels", "popsize", "inf_batch", "restarts", "N", "m",
                                          "len_kernel"}
# torchattacks classes that cannot be built from keyword settings alone (they need other attacks or a train loader).
NOT_FROM_SETTINGS = {"MultiAttack", "LGV"}
# Settings that take one of a few words, as each class's docstring lists them (torchattacks/attacks/apgd.py,
# apgdt.py, fab.py, square.py, upgd.py, autoattack.py, tifgsm.py, pgdrs.py, pixle.py). torchattacks checks most of them
# only when the attack runs (APGD asserts its norm mid-attack) or never (Square's unknown loss falls through).
CHOICE_SETTINGS = {
    ("APGD", "norm"): ("Linf", "L2"), ("APGD", "loss"): ("ce", "dlr"),
    ("APGDT", "norm"): ("Linf", "L2"),
    ("FAB", "norm"): ("Linf", "L2", "L1"),
    ("Square", "norm"): ("Linf", "L2"), ("Square", "loss"): ("margin", "ce"),
    ("UPGD", "loss"): ("ce", "margin", "dlr"),
    ("AutoAttack", "norm"): ("Linf", "L2"), ("AutoAttack", "version"): ("standard", "plus", "rand"),
    ("TIFGSM", "kernel_name"): ("gaussian", "linear", "uniform"),
    ("PGDRS", "noise_type"): ("guassian", "uniform"), ("PGDRSL2", "noise_type"): ("guassian", "uniform"),
    ("Pixle", "pixel_mapping"): ("random", "similarity", "similarity_random", "distance", "distance_random"),
}
# What a class raises when its constructor refuses an argument.
CONSTRUCTION_ERRORS = (AssertionError, ValueError, TypeError, KeyError, IndexError)
SUITE_KEYS = {"description", "protocol", "eps", "attacks"}
ATTACK_KEYS = {"class", "name", "protocol", "eps", "params", "per_eps"}


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
        if self.attack in ELLBENCH_ATTACKS:
            implementation = {"implementation": importlib.import_module(ELLBENCH_ATTACKS[self.attack]).REPRODUCES,
                              "torch": importlib.metadata.version("torch")}
        else:
            implementation = {"torchattacks": importlib.metadata.version("torchattacks")}
        return {"suite": self.suite, "name": self.name, "attack": self.attack, "protocol": self.protocol,
                "eps": self.eps, "params": dict(sorted(self.params.items())), **implementation}


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
        numerator, denominator = (float(match.group(1)), float(match.group(2))) if match else (float(text), 1.0)
    except ValueError:
        raise EllbenchError(f"expected a number such as 0.01 or 4/255, got {text!r}") from None
    if denominator == 0:
        raise EllbenchError(f"division by zero in {text!r}")
    return numerator / denominator


def parse_eps(value) -> float:
    """A budget in [0, 1], from a number or 'k/255'."""
    eps = parse_number(value)
    if not math.isfinite(eps) or eps < 0 or eps > 1:
        raise EllbenchError(f"eps must be between 0 and 1, got {value!r}")
    return eps


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
    """The attack class called `name`: one of ellbench's own (SPSA-cleverhans), or torchattacks' (case-sensitive)."""
    import torchattacks

    if name in ELLBENCH_ATTACKS:
        module = importlib.import_module(ELLBENCH_ATTACKS[name])
        return getattr(module, module.CLASS_NAME)
    if name not in torchattacks.__all__ or name in NOT_FROM_SETTINGS:
        known = [*ELLBENCH_ATTACKS, *(n for n in torchattacks.__all__ if n not in NOT_FROM_SETTINGS)]
        close = [n for n in known if n.lower() == str(name).lower()]
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
        raise EllbenchError(f"unknown attack {name!r}; {hint}")
    return getattr(torchattacks, name)


def _class_defaults(cls: type) -> dict:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # skip self, model
    return {p.name: p.default for p in parameters if p.name not in NOT_SETTINGS}


# Settings whose product is about how many forward passes an attack makes per batch: iterations, restarts, EOT samples.
ITERATION_SETTINGS = ("steps", "nb_iter", "max_iterations", "n_queries")
REPEAT_SETTINGS = ("n_restarts", "restarts", "eot_iter", "spsa_iters")


def forward_passes(entry: AttackEntry) -> int | None:
    """Roughly how many forward passes `entry`'s attack makes per batch (iterations x restarts x EOT samples), for
    progress within a batch; None for attacks without an iteration count (one-step attacks)."""
    settings = {**_class_defaults(attack_class(entry.attack)), **entry.params}
    iterations = [settings[key] for key in ITERATION_SETTINGS if isinstance(settings.get(key), int)]
    if not iterations:
        return None
    total = iterations[0]
    for key in REPEAT_SETTINGS:
        if isinstance(settings.get(key), int) and not isinstance(settings.get(key), bool) and settings[key] > 1:
            total *= settings[key]
    return max(1, total)


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
    choices = CHOICE_SETTINGS.get((attack, key))
    if choices is not None and value not in choices:
        raise EllbenchError(f"{attack} setting {key} must be one of {', '.join(choices)}, got {value!r}")
    if isinstance(default, tuple | list):  # e.g. Pixle's patch sizes: one number or a list of numbers
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                                for v in items):
            raise EllbenchError(f"{attack} setting {key} must be a number or a list of numbers, got {value!r}")
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
    if isinstance(value, float) and not math.isfinite(value):
        raise EllbenchError(f"{attack} setting {key} must be a finite number, got {value!r}")
    if key in COUNT_SETTINGS and value < 1:
        raise EllbenchError(f"{attack} setting {key} must be at least 1, got {value}")
    if key in POSITIVE_SETTINGS and not value > 0:
        raise EllbenchError(f"{attack} setting {key} must be positive, got {value}")
    return value


def make_entries(attack: str, params: dict, *, protocol: str = "standard", name: str | None = None,
                 eps=None, suite: str | None = None) -> list[AttackEntry]:
    """Validated entries, one per budget, for an attack class (see attack_class) and its keyword settings.

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
    if protocol == "paper" and attack not in PAPER_INPUT_UNITS and attack not in PAPER_NATIVE:
        raise EllbenchError(f"{attack} cannot run under the paper protocol (normalised space); "
                            f"use the standard protocol, or one of {', '.join([*PAPER_INPUT_UNITS, *PAPER_NATIVE])}")
    if protocol != "paper" and attack in PAPER_NATIVE:
        raise EllbenchError(f"{attack} reproduces the paper's attack in normalised space: use it with the paper "
                            "protocol")
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
        entries = [AttackEntry(name or attack, attack, protocol, None, checked, suite)]
    else:
        if eps is None or (isinstance(eps, list) and not eps):
            raise EllbenchError(f"{attack} needs a budget, e.g. eps=4/255")
        budgets = [parse_eps(e) for e in (eps if isinstance(eps, list) else [eps])]
        if len(set(budgets)) != len(budgets):
            raise EllbenchError(f"{attack}: the same eps is listed twice")
        entries = [
            AttackEntry(name or attack, attack, protocol, budget,
                        {k: (v.factor * budget if isinstance(v, PerEps) else v) for k, v in checked.items()}, suite)
            for budget in budgets
        ]
    for entry in entries:
        check_construction(cls, entry)
    return entries


def construct(cls: type, model, entry: AttackEntry, kwargs: dict | None = None):
    """`cls(model, **kwargs)` (default: the entry's settings); an argument the class refuses is a one-line error
    naming the setting (found by building the class with each setting alone)."""
    kwargs = entry.kwargs() if kwargs is None else kwargs
    try:
        return cls(model, **kwargs)
    except EllbenchError:
        raise
    except CONSTRUCTION_ERRORS as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        base = {"eps": kwargs["eps"]} if "eps" in kwargs else {}
        culprit = None
        for key, value in kwargs.items():
            try:
                cls(model, **{**base, key: value})
            except CONSTRUCTION_ERRORS:
                culprit = f"setting {key}={value!r}"
                break
        raise EllbenchError(f"{entry.attack} refuses {culprit or 'its settings'}: {first}") from None


def check_construction(cls: type, entry: AttackEntry) -> None:
    """Build the attack around a one-parameter stand-in model: the class's own checks run before any work.

    The stand-in's parameter is zeros, not a random init: checking must not move torch's global generator.
    """
    import torch

    stand_in = torch.nn.Module()
    stand_in.weight = torch.nn.Parameter(torch.zeros(1))
    construct(cls, stand_in, entry)


def load_suite(name_or_path: str | Path) -> list[AttackEntry]:
    """Entries of a suite (a shipped name or a TOML path), one per (attack, eps), validated."""
    path, data = read_suite("attacks", name_or_path)
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
