"""DeiT-family vision transformers built from timm parts: the size table, default configs and one builder.

Every ViT-shaped family of ellbench (DeiT, Elliptical, KDE, RKDE, MoM) is timm's `VisionTransformer` (or a subclass)
with DeiT's sizes and its own attention class, so stock DeiT state dicts load into all of them.
A family registers a variant in three lines::

    @register_model
    def kde_tiny_patch16_224(pretrained=False, **kwargs):
        return create_vit("kde_tiny_patch16_224", attn_layer=partial(KdeAttention, a=0.2), pretrained=pretrained,
                          **kwargs)

The size is the second word of the variant name (``kde_tiny_...`` -> ``tiny``). timm's model registry only knows these
names after ``import ellbench`` (or ``import ellbench.models``): timm has no plugin discovery.
"""

import functools
from functools import partial

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, get_pretrained_cfg, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ellbench.errors import EllbenchError

# DeiT (Touvron et al. 2021, Table 1) and the paper's 6-head tiny ablation (its Table 10; stefvk/Elliptical-Attention
# ImageNet/models.py, deit_mahala_overlayers_tiny2_patch16_224): patch 16, 224 px,
# depth 12. "micro" is ellbench's small-image config for 8-32 px inputs (under 3M parameters, trains on CPU).
SIZES = {
    "tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "tiny6h": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6),
    "small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "micro": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
}
# Shared by every size: the official code's block (stefvk/Elliptical-Attention ImageNet/models.py:614-785: mlp_ratio 4,
# qkv bias, LayerNorm eps 1e-6).
COMMON_ARGS = dict(mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


# ImageNet models see ImageNet statistics; micro models train from scratch on small 10-class sets, where the
# neutral 0.5/0.5 maps [0, 1] pixels to [-1, 1].
DEFAULT_CFGS = {
    "imagenet": _cfg(),
    "micro": _cfg(
        num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    ),
}


def size_of(variant: str) -> str:
    """Size key of a variant name: its second word (``elliptical_tiny6h_patch16_224`` -> ``tiny6h``)."""
    words = variant.split("_")
    if len(words) < 2 or words[1] not in SIZES:
        raise EllbenchError(f"model name {variant!r} names no known size; sizes: {', '.join(SIZES)}")
    return words[1]


def default_cfg(size: str) -> dict:
    """The pretrained_cfg (input size, mean/std, crop) a variant of this size gets unless timm's registry has one."""
    return dict(DEFAULT_CFGS["micro" if size == "micro" else "imagenet"])


def bind_attn_layer(attn_cls: type, **defaults) -> type:
    """A subclass of `attn_cls` whose constructor defaults to `defaults`.

    timm's Block checks `issubclass(attn_layer, ...)`, so it needs a class where a `functools.partial` would be natural.
    The subclass keeps the parent's name and parameter names, so state dicts are unchanged.
    """

    def __init__(self, *args, **kwargs):
        attn_cls.__init__(self, *args, **{**defaults, **kwargs})

    return type(attn_cls.__name__, (attn_cls,), {"__init__": __init__, "__module__": attn_cls.__module__})


def _as_class(attn_layer):
    if isinstance(attn_layer, functools.partial):
        return bind_attn_layer(attn_layer.func, **attn_layer.keywords)
    return attn_layer


def create_vit(
    variant: str,
    *,
    attn_layer=None,
    model_cls: type = VisionTransformer,
    pretrained: bool = False,
    pretrained_cfg=None,
    pretrained_cfg_overlay: dict | None = None,
    **kwargs,
) -> VisionTransformer:
    """Build `model_cls` with the sizes of `variant` through timm's `build_model_with_cfg`.

    `attn_layer` may be a class or a `functools.partial` of one. Keyword arguments override the size table
    (img_size, patch_size, num_classes, drop_path_rate, ...); an overridden img_size or num_classes is written into the
    model's pretrained_cfg too, so the cfg describes the model actually built.
    """
    out_indices = kwargs.pop("out_indices", 3)
    model_args = {**COMMON_ARGS, **SIZES[size_of(variant)]}
    if attn_layer is not None:
        model_args["attn_layer"] = _as_class(attn_layer)
    model_args.update(kwargs)
    if pretrained_cfg is None and get_pretrained_cfg(variant) is None:
        pretrained_cfg = default_cfg(size_of(variant))
    overlay = dict(pretrained_cfg_overlay or {})
    if "img_size" in kwargs:
        side = kwargs["img_size"]
        height, width = (side, side) if isinstance(side, int) else tuple(side)
        overlay.setdefault("input_size", (kwargs.get("in_chans", 3), height, width))
    if "num_classes" in kwargs:
        overlay.setdefault("num_classes", kwargs["num_classes"])
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **model_args,
    )


@register_model
def deit_micro_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT with plain dot-product attention, small-image config (32 px, patch 4, 6 blocks of width 128)."""
    return create_vit("deit_micro_patch4_32", pretrained=pretrained, **kwargs)
