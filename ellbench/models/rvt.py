"""Robust Vision Transformer (RVT): Mao et al., "Towards Robust Vision Transformer", CVPR 2022.

The architecture of the official code (github.com/vtddggg/Robust-Vision-Transformer, robust_models.py):
a convolutional stem (total stride 16, no CLS token, no positional embedding), pre-LN blocks whose MLP is
convolutional (1x1 conv, BN, GELU, 3x3 depthwise conv, BN, GELU, 1x1 conv, BN; the depthwise conv supplies the
position information; width 768 keeps the linear MLP), an optional depthwise-conv pooling between stages (RVT-Ti),
and global average pooling, LayerNorm and a linear head.

The "plus" variants (RVT*) add position-aware attention scaling (PAAS): a learnable mask M in R^{heads x N x N}
multiplying the scaled logits, softmax((q k^T / sqrt(D_h)) * sigmoid(M)), in the first `masked_blocks` blocks.
The official code allocates M uninitialised; here it starts near 0 (trunc-normal, std 0.02), so sigmoid(M) ~ 0.5,
the value fresh zeroed memory gives.

Parameter names follow the official code, so its checkpoints (rvt_ti.pth, ...) load strictly.
`rvt_micro_32` is ellbench's small-image variant (8-32 px inputs): a stride-4 stem and the width and depth of the
micro DeiT (embed 128, 4 heads, depth 6).
"""

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ellbench.errors import EllbenchError


@dataclass(frozen=True)
class StemCfg:
    """Convolutional stem: conv(k, stride, pad) -> BN -> [maxpool 3/2] -> conv(patch, stride patch)."""

    kernel: int = 7
    stride: int = 2
    padding: int = 2
    max_pool: bool = True
    patch: int = 4
    channels: int = 32

    def grid(self, size: int) -> int:
        """Side of the output feature map for an input side `size` (the conv/pool output-size formula)."""
        side = (size + 2 * self.padding - self.kernel) // self.stride + 1
        if self.max_pool:
            side = (side - 1) // 2 + 1  # MaxPool2d(3, stride 2, padding 1)
        return side // self.patch


@dataclass(frozen=True)
class RVTCfg:
    """One RVT variant: per-stage head width (base_dims), depth and heads, as in the official code."""

    base_dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratio: float = 4.0
    masked_blocks: int = 0  # PAAS in the first `masked_blocks` blocks of stage 0 (0: plain RVT)
    stem: StemCfg = field(default_factory=StemCfg)


MICRO_STEM = StemCfg(kernel=3, stride=1, padding=1, max_pool=False, patch=4)

CONFIGS = {
    "rvt_tiny": RVTCfg(base_dims=(32, 32), depths=(10, 2), heads=(6, 12)),
    "rvt_small": RVTCfg(base_dims=(64,), depths=(12,), heads=(6,)),
    "rvt_base": RVTCfg(base_dims=(64,), depths=(12,), heads=(12,)),
    "rvt_tiny_plus": RVTCfg(base_dims=(32, 32), depths=(10, 2), heads=(6, 12), masked_blocks=10),
    "rvt_small_plus": RVTCfg(base_dims=(64,), depths=(12,), heads=(6,), masked_blocks=5),
    "rvt_base_plus": RVTCfg(base_dims=(64,), depths=(12,), heads=(12,), masked_blocks=5),
    "rvt_micro_32": RVTCfg(base_dims=(32,), depths=(6,), heads=(4,), stem=MICRO_STEM),
}


class ConvStem(nn.Module):
    """Image [B, 3, H, W] -> feature map [B, C, H / total_stride, W / total_stride]."""

    def __init__(self, in_chans: int, embed_dim: int, cfg: StemCfg):
        super().__init__()
        layers = [
            nn.Conv2d(in_chans, cfg.channels, cfg.kernel, stride=cfg.stride, padding=cfg.padding),
            nn.BatchNorm2d(cfg.channels),
            nn.MaxPool2d(3, stride=2, padding=1) if cfg.max_pool else nn.Identity(),
            nn.Conv2d(cfg.channels, embed_dim, cfg.patch, stride=cfg.patch),
        ]
        self.proj = nn.Sequential(*layers)  # indices 0, 1, 3 hold parameters, as in the official checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ConvMlp(nn.Module):
    """RVT's convolutional feed-forward: tokens [B, N, C] on an (H, W) grid -> [B, N, C]."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.bn3 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, *grid)  # [B, C, H, W]
        x = self.drop(self.act(self.bn1(self.fc1(x))))
        x = self.act(self.bn2(self.dwconv(x)))
        x = self.drop(self.bn3(self.fc2(x)))
        return x.flatten(2).transpose(1, 2)  # [B, N, C]


class LinearMlp(Mlp):
    """The plain MLP the official code keeps at width 768 (RVT-B); takes the grid argument and ignores it."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return super().forward(x)


class PAASAttention(Attention):
    """Multi-head attention with optional position-aware attention scaling (RVT*).

    With a mask, the logits are multiplied by sigmoid(att_mask) [heads, N, N] before the softmax; a product cannot be
    folded into SDPA's additive mask, so that path is explicit. Without a mask it is timm's Attention (fused or not).
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int | None = None, **kwargs):
        super().__init__(dim, num_heads, qkv_bias=True, **kwargs)
        self.att_mask = None
        if num_tokens is not None:
            self.att_mask = nn.Parameter(torch.empty(num_heads, num_tokens, num_tokens))
            trunc_normal_(self.att_mask, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.att_mask is None:
            return super().forward(x)
        B, N, C = x.shape
        if N != self.att_mask.shape[-1]:
            raise EllbenchError(f"PAAS mask is for {self.att_mask.shape[-1]} tokens, got {N}: use the model's img_size")
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale * self.att_mask.sigmoid()  # [B, H, N, N]
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class RVTBlock(nn.Module):
    """Pre-LN block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))) with the MLP on the token grid."""

    def __init__(
        self, dim, num_heads, mlp_ratio, *, num_tokens=None, drop=0.0, attn_drop=0.0, drop_path=0.0
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PAASAttention(dim, num_heads, num_tokens, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = LinearMlp(dim, hidden, drop=drop) if dim == 768 else ConvMlp(dim, hidden, drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class RVTStage(nn.Module):
    """A stack of blocks on a feature map: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, drop_path, *, masked_blocks=0, num_tokens=None, **kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            RVTBlock(
                dim, num_heads, mlp_ratio, num_tokens=num_tokens if i < masked_blocks else None,
                drop_path=drop_path[i], **kwargs
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        for block in self.blocks:
            x = block(x, (H, W))
        return x.transpose(1, 2).reshape(B, C, H, W)


class ConvPooling(nn.Module):
    """Depthwise-grouped strided conv between stages: [B, C, H, W] -> [B, C', ceil(H/2), ceil(W/2)]."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, stride + 1, stride=stride, padding=stride // 2, groups=in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class RVT(nn.Module):
    """Robust Vision Transformer: conv stem, stages of RVT blocks with conv pooling, GAP + LayerNorm + linear head."""

    def __init__(
        self,
        cfg: RVTCfg,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        patch_size: int | None = None,
    ):
        """`patch_size` overrides the stride of the stem's last conv (4 in every official variant)."""
        super().__init__()
        if patch_size is not None:
            cfg = replace(cfg, stem=replace(cfg.stem, patch=patch_size))
        dims = [d * h for d, h in zip(cfg.base_dims, cfg.heads, strict=True)]
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        grid_tokens = cfg.stem.grid(height) * cfg.stem.grid(width)
        self.num_classes, self.num_features, self.embed_dim = num_classes, dims[-1], dims[-1]
        self.patch_embed = ConvStem(in_chans, dims[0], cfg.stem)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(cfg.depths)
        drop_path = [drop_path_rate * i / total for i in range(total)]  # i / total, as official; plain Python so that
        # building on the meta device (parameter counts in `ellbench models`) works
        self.transformers, self.pools, start = nn.ModuleList(), nn.ModuleList(), 0
        for stage, (dim, depth, heads) in enumerate(zip(dims, cfg.depths, cfg.heads, strict=True)):
            masked = cfg.masked_blocks if stage == 0 else 0
            self.transformers.append(
                RVTStage(
                    dim, depth, heads, cfg.mlp_ratio, drop_path[start : start + depth], masked_blocks=masked,
                    num_tokens=grid_tokens if masked else None, drop=drop_rate, attn_drop=attn_drop_rate,
                )
            )
            start += depth
            if stage + 1 < len(dims):
                self.pools.append(ConvPooling(dim, dims[stage + 1]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] -> last-stage feature map [B, C, H', W']."""
        x = self.pos_drop(self.patch_embed(x))
        for stage, transformer in enumerate(self.transformers):
            x = transformer(x)
            if stage < len(self.pools):
                x = self.pools[stage](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(F.adaptive_avg_pool2d(x, 1).flatten(1))  # [B, C]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0", "classifier": "head", **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        **{name: _cfg() for name in CONFIGS if name != "rvt_micro_32"},
        # like ellbench's other micro models: trained from scratch on 10-class sets, [0, 1] pixels mapped to [-1, 1]
        "rvt_micro_32": _cfg(
            num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear",
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        ),
    }
)


def _create_rvt(variant: str, pretrained: bool = False, **kwargs) -> RVT:
    """Build a variant; an overridden img_size or num_classes is written into its pretrained_cfg too."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    img_size = kwargs.setdefault("img_size", default_cfgs[variant].default.input_size[-1])
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    overlay.setdefault("input_size", (kwargs.get("in_chans", 3), height, width))
    if "num_classes" in kwargs:
        overlay.setdefault("num_classes", kwargs["num_classes"])
    return build_model_with_cfg(
        RVT, variant, pretrained, pretrained_cfg_overlay=overlay, cfg=CONFIGS[variant], **kwargs
    )


@register_model
def rvt_tiny(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_tiny", pretrained, **kwargs)


@register_model
def rvt_small(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_small", pretrained, **kwargs)


@register_model
def rvt_base(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_base", pretrained, **kwargs)


@register_model
def rvt_tiny_plus(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_tiny_plus", pretrained, **kwargs)


@register_model
def rvt_small_plus(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_small_plus", pretrained, **kwargs)


@register_model
def rvt_base_plus(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_base_plus", pretrained, **kwargs)


@register_model
def rvt_micro_32(pretrained: bool = False, **kwargs) -> RVT:
    return _create_rvt("rvt_micro_32", pretrained, **kwargs)
