"""A model ready for evaluation: one read of its checkpoint, its settings, its device.

Checkpoints are `.safetensors` files or `.pt/.pth/.bin` files read with `torch.load(weights_only=True)`, which refuses
pickles that would import or call anything. Common wrappers (a `state_dict`/`model`/`module` entry, `module.` or
`model.` key prefixes) are stripped. The file is read once: its bytes give the state dict and the sha256 that
identifies the file. Job keys identify weights by `weights_sha256`, a hash of the tensors the model holds once they
are loaded, so the same weights read from a file or from timm's hub copy are the same job.

Published weights (`pretrained=True`, or a name with a tag such as deit_small_patch16_224.fb_in1k) are timm's,
loaded by timm from the Hugging Face cache or the hub (ellbench.models.factory).

The JSON sidecar (`<checkpoint>.json`, or the checkpoint's path with a `.json` suffix, as `ellbench train` writes it)
is data, never a recipe: it may carry only the fields ellbench writes, and its model settings only the typed shape
settings in SIDECAR_MODEL_SETTINGS. A sidecar cannot name a file, turn on `pretrained` or pass anything else to
`timm.create_model`, so a checkpoint from a stranger cannot make timm open a pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import warnings
from pathlib import Path

from ellbench.errors import EllbenchError

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# What `ellbench train` writes into a sidecar (only `model` and `model_kwargs` are used; the rest is a record).
SIDECAR_FIELDS = {"model": str, "model_kwargs": dict, "dataset": str, "train": dict, "history": list, "ellbench": str,
                  "parameters": int}
# Model settings a sidecar may give: shapes of the weights, all positive numbers.
SIDECAR_MODEL_SETTINGS = {"img_size": int, "num_classes": int, "patch_size": int, "depth": int, "embed_dim": int,
                          "num_heads": int, "mlp_ratio": float}


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read once: its tensors, its metadata (sidecar and file header) and the sha256 of its bytes."""

    path: Path
    state: dict  # str -> torch.Tensor, wrappers removed
    meta: dict  # {"model": name, "model_kwargs": {...}} from the sidecar, "model" also from a safetensors header
    sha256: str

    @property
    def model_kwargs(self) -> dict:
        return dict(self.meta.get("model_kwargs", {}))

    def __str__(self) -> str:
        return str(self.path)


@dataclasses.dataclass
class LoadedModel:
    """A model ready for evaluation plus the identity fields its job keys use."""

    name: str
    module: object  # NormalizedModel: takes [0, 1] images
    checkpoint_id: str  # "sha256:<weights_sha256>" or "random-init:seed=<n>"
    device: str
    amp: str = "off"  # autocast of the network: off (float32, the reference), bf16 or fp16; part of job keys when on
    weights: str = ""  # where the weights came from, in words

    @property
    def timm_model(self):
        """The bare timm model inside the [0, 1] wrapper (its pretrained_cfg and input traits)."""
        return getattr(self.module, "model", self.module)


def weights_sha256(state_dict: dict) -> str:
    """sha256 of a state dict's tensors: each name, dtype, shape and bytes, in sorted name order.

    It identifies weights whatever file, format or hub copy they came in.
    """
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Reading a checkpoint


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint's tensors without running code, with its sidecar; one line naming the file on any problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise EllbenchError(f"checkpoint {path} has an unknown type; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EllbenchError(f"checkpoint {path} not found") from None
    except OSError as error:
        raise EllbenchError(f"checkpoint {path} is unreadable: {error.strerror or error}") from None
    if not data:
        raise EllbenchError(f"checkpoint {path} is empty (0 bytes)")
    if suffix == ".safetensors":
        state, header = _parse_safetensors(data, path)
    else:
        state, header = _parse_torch(data, path), {}
    meta = {"model": header["model"]} if isinstance(header.get("model"), str) else {}
    meta.update(read_sidecar(path))
    return Checkpoint(path, _unwrap(state, path), meta, hashlib.sha256(data).hexdigest())


def precheck_checkpoint(path: str | Path) -> None:
    """What can be checked of a checkpoint without torch, so that a bad file fails before any heavy import: its type,
    that it is not empty, its sidecar, and a safetensors file's header and length. read_checkpoint checks it all."""
    path = Path(path)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise EllbenchError(f"checkpoint {path} has an unknown type; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise EllbenchError(f"checkpoint {path} not found ({error.strerror or error})") from None
    if not size:
        raise EllbenchError(f"checkpoint {path} is empty (0 bytes)")
    read_sidecar(path)
    if path.suffix.lower() == ".safetensors":
        _check_safetensors_layout(path, size)


def _check_safetensors_layout(path: Path, size: int) -> None:
    """The safetensors layout: 8 bytes of header length, a JSON header, then every tensor's bytes, ending at the
    file's end (huggingface/safetensors, the format's README)."""
    def broken(why: str) -> EllbenchError:
        return EllbenchError(f"checkpoint {path} is not a readable safetensors file: {why}")

    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise broken(f"{size} bytes, shorter than the 8-byte header length")
            header_length = int.from_bytes(prefix, "little")
            if header_length > size - 8:
                raise broken(f"the header claims {header_length} bytes, the file has {size - 8} after the length")
            header = json.loads(handle.read(header_length))
    except OSError as error:
        raise EllbenchError(f"checkpoint {path} is unreadable: {error.strerror or error}") from None
    except ValueError as error:
        raise broken(f"its header is not JSON ({_first_line(error)})") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    ends = [entry.get("data_offsets", [0, 0])[-1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)]
    needed = 8 + header_length + max((end for end in ends if isinstance(end, int)), default=0)
    if needed > size:
        raise broken(f"truncated: {size} bytes, its header describes {needed}")


def _parse_safetensors(data: bytes, path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(data)
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_length]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise EllbenchError(f"checkpoint {path} is not a readable safetensors file: {_first_line(error)}") from None
    return state, header if isinstance(header, dict) else {}


def _parse_torch(data: bytes, path: Path):
    import pickle
    import re

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing: one line only
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        offender = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f" (it names {offender.group(1)})" if offender else ""
        raise EllbenchError(
            f"refusing to load {path}: it holds more than tensors{detail}; only plain weights load, nothing was run"
        ) from None
    except Exception as error:  # noqa: BLE001 - an untrusted file can make torch's unpickler raise almost anything
        text = str(error)
        if "weights_only" in text or "Unsupported global" in text:
            raise EllbenchError(f"refusing to load {path}: it holds more than tensors; only plain weights load, "
                                "nothing was run") from None
        raise EllbenchError(f"checkpoint {path} is unreadable ({type(error).__name__}): {_first_line(error)}") from None


def _unwrap(state, path: Path) -> dict:
    """The bare state dict inside common wrappers: {'model': ...}, {'state_dict': ...}, 'module.' prefixes."""
    while isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
        raise EllbenchError(f"checkpoint {path} holds no state dict of tensors (found {found})")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _all_tensors(state: dict) -> bool:
    import torch

    return all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())


def sidecar_path(path: str | Path) -> Path | None:
    """The sidecar of a checkpoint: `<checkpoint>.json`, else `<checkpoint stem>.json`; None when there is none."""
    path = Path(path)
    for candidate in (Path(f"{path}.json"), path.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def read_sidecar(path: str | Path) -> dict:
    """The sidecar's `model` and `model_kwargs`, checked against the allow-lists; {} when there is no sidecar."""
    candidate = sidecar_path(path)
    if candidate is None:
        return {}
    try:
        meta = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EllbenchError(f"checkpoint sidecar {candidate} is unreadable: {_first_line(error)}") from None
    if not isinstance(meta, dict):
        raise EllbenchError(f"checkpoint sidecar {candidate} must hold a JSON object")
    for field, value in meta.items():
        if field not in SIDECAR_FIELDS:
            raise EllbenchError(f"checkpoint sidecar {candidate}: unknown field {field!r}; a sidecar may hold only "
                                f"{', '.join(SIDECAR_FIELDS)}")
        if not _has_type(value, SIDECAR_FIELDS[field]):
            raise EllbenchError(f"checkpoint sidecar {candidate}: {field} must be {SIDECAR_FIELDS[field].__name__}, "
                                f"got {type(value).__name__}")
    settings = meta.get("model_kwargs", {})
    for key, value in settings.items():
        if key not in SIDECAR_MODEL_SETTINGS:
            raise EllbenchError(f"checkpoint sidecar {candidate}: model setting {key!r} is not allowed; a sidecar "
                                f"may set only {', '.join(SIDECAR_MODEL_SETTINGS)}")
        if not _is_shape_setting(key, value):
            raise EllbenchError(f"checkpoint sidecar {candidate}: model setting {key} must be a positive "
                                f"{SIDECAR_MODEL_SETTINGS[key].__name__}, got {value!r}")
    return {key: meta[key] for key in ("model", "model_kwargs") if key in meta}


def _has_type(value, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _is_shape_setting(key: str, value) -> bool:
    if key == "img_size" and isinstance(value, list):  # timm also takes [height, width]
        return len(value) == 2 and all(_is_shape_setting("num_classes", v) for v in value)
    if SIDECAR_MODEL_SETTINGS[key] is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return _has_type(value, int) and value > 0


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---------------------------------------------------------------------------------------------------------------
# Building a model for evaluation


def resolve_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N' as asked, or for 'auto' the GPU when there is one; a missing GPU is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise EllbenchError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EllbenchError(f"--device {device} asked for, but no CUDA GPU is available here; use --device cpu")
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise EllbenchError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def model_kwargs_for(model: str, image_size: int, num_classes: int) -> dict:
    """Constructor settings that fit a small-image model to a data set (patch 2 below 16 px, else 4).

    RVT's conv stem takes the same patch size as its stride, so every family sees the same token grid. A model whose
    constructor takes no image size (a CNN such as resnet18) only gets the number of classes.
    """
    kwargs = {"num_classes": num_classes}
    if not _takes_image_size(model):
        return kwargs
    kwargs["img_size"] = image_size
    if "patch" in model or model.startswith("rvt_"):
        kwargs["patch_size"] = 2 if image_size <= 16 else 4
    return kwargs


def _takes_image_size(name: str) -> bool:
    """Whether the model class behind a timm name has an `img_size` constructor argument (built on the meta device)."""
    import inspect

    import timm
    import torch

    import ellbench.models  # noqa: F401  (registers ellbench's models with timm)

    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except NotImplementedError:  # a constructor that needs real tensor data
        model = timm.create_model(name)
    except (RuntimeError, TypeError, ValueError):
        return True  # let the real build report the problem
    for cls in type(model).__mro__:  # a subclass may pass **kwargs on to its parent's constructor
        parameters = inspect.signature(cls.__init__).parameters
        if "img_size" in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def load_model(name: str, checkpoint: str | Path | Checkpoint | None = None, *, seed: int = 0, **kwargs):
    """`name` built for [0, 1] images (ellbench.models.factory.NormalizedModel) in eval mode, with a checkpoint's
    weights when given, else random weights drawn from `seed` (or timm's published weights with pretrained=True).

    The sidecar's model settings describe the weights and apply first; keyword settings that are not None override
    them.
    """
    from ellbench.models.factory import build_model

    kwargs = {key: value for key, value in kwargs.items() if value is not None}

    if checkpoint is None:
        return build_model(name, seed=seed, **kwargs)
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = read_checkpoint(checkpoint)
    return build_model(name, seed=seed, state_dict=checkpoint.state, context=f"checkpoint {checkpoint.path}",
                       **{**checkpoint.model_kwargs, **kwargs})


def load_for_eval(name: str, checkpoint: str | Path | None = None, *, pretrained: bool = False, dataset=None,
                  seed: int = 0, device: str = "cpu", model_kwargs: dict | None = None,
                  input_size: int | None = None, amp: str = "off") -> LoadedModel:
    """Build `name` for evaluation in eval mode: with a checkpoint's weights, timm's published weights (`pretrained`,
    or a name with a tag and no checkpoint), or random init from `seed`.

    Without a checkpoint or published weights, a small-image data set (under 64 px) gets a model sized for it
    (model_kwargs_for). `input_size` is the evaluation size asked for (--img-size; see factory.build_model). A model
    with published weights is named with its tag (deit_small_patch16_224 -> deit_small_patch16_224.fb_in1k).
    `amp` (off, bf16, fp16) runs the network under autocast; weights stay float32 (ellbench.models.amp).
    """
    from ellbench.distributed import local_device
    from ellbench.models.amp import check_amp
    from ellbench.models.factory import has_tag, published_weights

    check_amp(amp)
    device = local_device(resolve_device(device))
    if pretrained and checkpoint is not None:
        raise EllbenchError("give either --pretrained (timm's published weights) or --checkpoint, not both")
    published = checkpoint is None and (pretrained or has_tag(name))
    kwargs = dict(model_kwargs or {})
    read = read_checkpoint(checkpoint) if checkpoint is not None else None
    if read is None and not published and dataset is not None and dataset.image_size is not None \
            and dataset.image_size < 64 and not kwargs:
        kwargs = model_kwargs_for(name, dataset.image_size, dataset.num_classes)
    module = load_model(name, read, seed=seed, pretrained=published or None, input_size=input_size, **kwargs)
    module.amp = amp
    if read is None and not published:
        checkpoint_id, weights = f"random-init:seed={seed}", f"random init (seed {seed})"
    else:
        checkpoint_id = f"sha256:{weights_sha256(module.model.state_dict())}"  # the tensors as loaded, on the CPU
        weights = f"checkpoint {read.path}" if read else f"timm's published weights ({published_weights(name)})"
    if published and module.model.pretrained_cfg.get("tag"):
        cfg = module.model.pretrained_cfg
        name = f"{cfg.get('architecture') or name.split('.')[0]}.{cfg['tag']}"
    module.eval().to(device)
    return LoadedModel(name=name, module=module, checkpoint_id=checkpoint_id, device=device, amp=amp,
                       weights=weights)
