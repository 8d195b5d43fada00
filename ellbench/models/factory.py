"""Build any registered model for [0, 1] images, load checkpoints safely, and list what is registered.

Checkpoints are `.safetensors` files or `.pt/.pth/.bin` files read with `torch.load(weights_only=True)`, which refuses
pickles that would import or call anything. Common wrappers (a `state_dict`/`model`/`module` entry, `module.` or
`model.` key prefixes) are stripped. An optional JSON sidecar (`<checkpoint>.json` or the checkpoint path with a
`.json` suffix, as training writes it) holds `{"model": name, "model_kwargs": {...}}`.
"""

import difflib
import hashlib
import json
import pickle
import re
from pathlib import Path

import timm
import torch
from torch import nn

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)
from ellbench.errors import EllbenchError

# timm's own models listed beside ellbench's: the DeiT baselines of the paper.
TIMM_BASELINES = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


class NormalizedModel(nn.Module):
    """A classifier that takes float images in [0, 1] and normalises them with its pretrained_cfg's mean and std."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.model = model
        # Not persistent: the state dict stays the wrapped model's, under the prefix "model.".
        self.register_buffer("mean", torch.tensor(mean or cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or cfg["std"]).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)

    @property
    def pretrained_cfg(self) -> dict:
        return self.model.pretrained_cfg

    @property
    def input_size(self) -> tuple:
        return tuple(self.model.pretrained_cfg["input_size"])


def family_of(name: str) -> str:
    """Family of a model name: its first word (``elliptical_tiny_patch16_224`` -> ``elliptical``)."""
    return name.split("_")[0]


def _check_registered(name: str) -> None:
    if timm.is_model(name):
        return
    ours = [row_name for row_name in timm.list_models() if _is_listed(row_name)]
    close = difflib.get_close_matches(name, ours, n=3) or difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `ellbench models`"
    raise EllbenchError(f"unknown model {name!r}{hint}")


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    **kwargs,
) -> NormalizedModel:
    """Build the timm model `name` wrapped for [0, 1] input, in eval mode, with weights from `checkpoint` if given.

    Random initialisation is drawn from `seed` without touching the global RNG. With a checkpoint, a sidecar naming
    the same model supplies default constructor kwargs, the classifier's width sets `num_classes` when not given, and
    the weights must fit exactly (one-line error naming the first offending keys otherwise).
    """
    _check_registered(name)
    model_kwargs = dict(kwargs)
    state_dict = None
    if checkpoint is not None:
        state_dict, meta = load_checkpoint(checkpoint)
        if meta.get("model") == name:
            model_kwargs = {**meta.get("model_kwargs", {}), **model_kwargs}
        if num_classes is None and "num_classes" not in model_kwargs and "head.weight" in state_dict:
            num_classes = state_dict["head.weight"].shape[0]
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    if img_size is not None:
        model_kwargs["img_size"] = img_size

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(name, **model_kwargs)
        except TypeError as error:
            raise EllbenchError(f"cannot build {name} with {model_kwargs}: {_first_line(error)}") from error
    if state_dict is not None:
        _load_strictly(model, state_dict, f"checkpoint {checkpoint} does not fit {name}")
    return NormalizedModel(model).eval()


def _load_strictly(model: nn.Module, state_dict: dict, context: str) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} in file, {tuple(value.shape)} in model"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = [
        f"{label} {len(items)}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
        if items
    ]
    if problems:
        raise EllbenchError(f"{context}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint's tensors without running code; returns (state_dict, meta from the sidecar or header)."""
    path = Path(path)
    if not path.is_file():
        raise EllbenchError(f"checkpoint {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    elif suffix in CHECKPOINT_SUFFIXES:
        state, meta = _read_torch_weights(path), {}
    else:
        raise EllbenchError(f"checkpoint {path} has an unknown type; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return _unwrap(state, path), {**meta, **_read_sidecar(path)}


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise EllbenchError(f"checkpoint {path} is not a readable safetensors file: {_first_line(error)}") from error


def _read_torch_weights(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        offender = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f" (it names {offender.group(1)})" if offender else ""
        raise EllbenchError(
            f"refusing to load {path}: it holds more than tensors{detail}; only plain weights load, nothing was run"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise EllbenchError(f"checkpoint {path} is unreadable: {_first_line(error)}") from error


def _unwrap(state, path: Path) -> dict[str, torch.Tensor]:
    """The bare state dict inside common wrappers: {'model': ...}, {'state_dict': ...}, 'module.' prefixes."""
    while isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        raise EllbenchError(f"checkpoint {path} holds no state dict of tensors")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _all_tensors(state: dict) -> bool:
    return all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())


def _read_sidecar(path: Path) -> dict:
    for candidate in (Path(f"{path}.json"), path.with_suffix(".json")):
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except (OSError, ValueError) as error:
                raise EllbenchError(f"checkpoint sidecar {candidate} is unreadable: {_first_line(error)}") from error
            if not isinstance(meta, dict) or not isinstance(meta.get("model_kwargs", {}), dict):
                raise EllbenchError(f"checkpoint sidecar {candidate} must hold an object with a model_kwargs object")
            return meta
    return {}


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file's bytes (hex), the identity a result is stored under."""
    path = Path(path)
    if not path.is_file():
        raise EllbenchError(f"checkpoint {path} not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_listed(name: str) -> bool:
    return name in TIMM_BASELINES or timm.models.model_entrypoint(name).__module__.startswith("ellbench.")


def _count_parameters(name: str) -> tuple[int, tuple]:
    # The meta device gives the same parameter shapes without memory or initialisation; a model whose constructor
    # needs real tensor data (NotImplementedError there) is built normally.
    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except NotImplementedError:
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters()), tuple(model.pretrained_cfg["input_size"])


def list_models() -> list[dict]:
    """ellbench's registered models and timm's DeiT baselines: name, family, params, input_size (C, H, W)."""
    rows = []
    for name in timm.list_models():
        if _is_listed(name):
            params, input_size = _count_parameters(name)
            rows.append(dict(name=name, family=family_of(name), params=params, input_size=list(input_size)))
    return sorted(rows, key=lambda row: (row["family"], row["params"], row["name"]))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
