"""Build any registered model for [0, 1] images, and list what is registered.

Checkpoint files are read in ellbench.models.loading; here weights arrive as a state dict that must fit exactly, or
are timm's published weights (`pretrained=True`, or a name with a tag such as deit_small_patch16_224.fb_in1k), which
timm loads from the Hugging Face cache or the hub.
"""

import contextlib
import difflib
import logging
import os

import timm
import torch
from torch import nn

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)
from ellbench.errors import EllbenchError
from ellbench.models.amp import autocast_logits, check_amp

# timm's own models listed beside ellbench's: the DeiT baselines of the paper.
TIMM_BASELINES = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")


class NormalizedModel(nn.Module):
    """A classifier that takes float images in [0, 1] and normalises them with its pretrained_cfg's mean and std.

    `amp` (off, bf16, fp16) runs the network under autocast (ellbench.models.amp): normalisation before it and the
    logits after it stay float32.
    """

    def __init__(self, model: nn.Module, mean=None, std=None, amp: str = "off"):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.model = model
        self.amp = check_amp(amp)
        # Not persistent: the state dict stays the wrapped model's, under the prefix "model.".
        self.register_buffer("mean", torch.tensor(mean or cfg["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or cfg["std"]).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return autocast_logits(self.model, (images - self.mean) / self.std, self.amp)

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
        check_tag(name)
        return
    ours = [row_name for row_name in timm.list_models() if _is_listed(row_name)]
    close = difflib.get_close_matches(name, ours, n=3) or difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `ellbench models`"
    raise EllbenchError(f"unknown model {name!r}{hint}")


def check_tag(name: str) -> None:
    """A name with a pretrained tag must name one of timm's tags for its architecture (one-line error otherwise)."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    architecture, tag = split_model_name_tag(name)
    if not tag:
        return
    try:
        found = get_pretrained_cfg(name) is not None
    except RuntimeError:
        found = False
    if not found:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{architecture}.*")]
        raise EllbenchError(f"{architecture} has no pretrained tag {tag!r}; timm knows "
                            f"{', '.join(tags[:8]) + (' ...' if len(tags) > 8 else '') if tags else 'none'}")


def has_tag(name: str) -> bool:
    """Whether `name` carries a pretrained tag (deit_small_patch16_224.fb_in1k)."""
    from timm.models import split_model_name_tag

    return bool(split_model_name_tag(name)[1])


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    state_dict: dict | None = None,
    pretrained: bool = False,
    input_size: int | None = None,
    seed: int = 0,
    context: str = "the state dict",
    **kwargs,
) -> NormalizedModel:
    """Build the timm model `name` wrapped for [0, 1] input, in eval mode, with `state_dict`'s weights if given, or
    timm's published weights with `pretrained=True`.

    Random initialisation is drawn from `seed` without touching the global RNG. With a state dict, the classifier's
    width sets `num_classes` when not given, and the weights must fit exactly (one-line error naming the first
    offending keys otherwise; `context` names where the weights came from). `img_size` is a constructor setting;
    `input_size` is the evaluation size asked for (validate.py's --img-size): timm builds a fixed-size model (a ViT)
    for it, resampling published position embeddings, and leaves a size-agnostic one (a CNN) as it is.
    """
    from timm.models import resolve_model_input_args

    _check_registered(name)
    model_kwargs = dict(kwargs)
    if state_dict is not None and num_classes is None and "num_classes" not in model_kwargs \
            and "head.weight" in state_dict:
        num_classes = state_dict["head.weight"].shape[0]
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    if img_size is not None:
        model_kwargs["img_size"] = img_size
    if input_size is not None:
        try:
            with _quiet_timm_builder():  # a model without a registered pretrained cfg (the micro ones) gets a warning
                arguments = resolve_model_input_args(name, {"img_size": input_size}, **model_kwargs)
        except ValueError as error:
            built = model_kwargs.get("img_size")
            hint = f"; these weights are for {built} px: pass --img-size {built} or leave it out" \
                if isinstance(built, int) else ""
            raise EllbenchError(f"cannot evaluate {name} at {input_size} px: {_first_line(error)}{hint}") from None
        model_kwargs = {key: value for key, value in arguments.items() if key not in ("model_name", "pretrained_cfg")}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = _create(name, pretrained, model_kwargs)
        except TypeError as error:
            raise EllbenchError(f"cannot build {name} with {model_kwargs}: {_first_line(error)}") from error
    if state_dict is not None:
        _load_strictly(model, state_dict, f"{context} does not fit {name}")
    return NormalizedModel(model).eval()


@contextlib.contextmanager
def _quiet_timm_builder():
    """timm's builder logs 'No pretrained configuration specified ... Using a default' to stderr for models without a
    registered pretrained cfg; ellbench's output is its own table and one-line errors."""
    logger = logging.getLogger("timm.models._builder")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _create(name: str, pretrained: bool, model_kwargs: dict) -> nn.Module:
    """timm.create_model; with pretrained=True a missing download is one line naming the weights and the way out."""
    if not pretrained:
        return timm.create_model(name, **model_kwargs)
    cfg = timm.models.get_pretrained_cfg(name)
    overlay = model_kwargs.get("pretrained_cfg_overlay") or {}
    source = overlay.get("file") or published_weights(name)
    if source is None:
        raise EllbenchError(f"timm has no published weights for {name}; pass --checkpoint FILE")
    try:
        return timm.create_model(name, pretrained=True, **model_kwargs)
    except OSError as error:  # the hub's LocalEntryNotFoundError, no network, no file: all OSErrors
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        why = "are not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else \
            f"could not be fetched ({_first_line(error)}; without a network set HF_HUB_OFFLINE=1 to fail at once)"
        hub_id = getattr(cfg, "hf_hub_id", None)
        fetch = f"`hf download {hub_id}` (or any timm.create_model(..., pretrained=True)) on a machine with network " \
            "into the same cache (HF_HOME)" if hub_id else f"download {source} on a machine with network"
        raise EllbenchError(f"weights of {name} ({source}) {why}; get them with {fetch}, or pass --checkpoint FILE"
                            ) from None


def published_weights(name: str) -> str | None:
    """Where timm loads `name`'s published weights from ('hf-hub:timm/...', a URL or a file); None if it has none."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        return f"hf-hub:{cfg.hf_hub_id}"
    return getattr(cfg, "file", None) or getattr(cfg, "url", None) or None


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
