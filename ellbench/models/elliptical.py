"""Elliptical Attention (Nielsen, Abdullaev, Teo, Nguyen; NeurIPS 2024) in DeiT, registered with timm.

Attention with a Mahalanobis metric M = diag(m), one per sample and head (the paper's
H = softmax(Q M K^T / sqrt(D_h)) V; stefvk/Elliptical-Attention ImageNet/models.py:300-302). The coordinate
relevance m is estimated without parameters from how much each value coordinate changes between consecutive blocks
(`W_over_layers`, ImageNet/models.py:217-260)::

    m_hat_d = mean_n |v_l[n, d] - v_(l-1)[n, d]| / delta      m = m_hat / max_d m_hat

so the previous block's values must reach the next block: here every block returns `(x, values)` and
`EllipticalVisionTransformer` threads them through its loop over blocks; block 0 sees none and uses plain dot-product
attention, as in the official code (`MahalaVisionTransformer`, ImageNet/models.py:471-570, `--M-positions 1 .. 11`).

Models: `elliptical_{tiny,tiny6h,small,base}_patch16_224` (DeiT sizes; tiny6h is the paper's heads ablation) and
`elliptical_micro_patch4_32` (8-32 px inputs). They exist in timm's registry once ellbench is imported.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.layers.config import use_fused_attn
from timm.models import register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer
from torch.utils.checkpoint import checkpoint

from ellbench.errors import EllbenchError
from ellbench.models.vit import bind_attn_layer, create_vit

ESTIMATORS = ("mean", "median")


def coordinate_relevance(
    values: torch.Tensor, prev_values: torch.Tensor, *, estimator: str = "mean", delta: float = 5.0
) -> torch.Tensor:
    """Relevance m [B, H, D_h] of each value coordinate, from this and the previous block's values [B, H, N, D_h].

    As `W_over_layers` in the official code (stefvk/Elliptical-Attention, ImageNet/models.py:217-260, delta=5 at line
    296): m_hat = mean over tokens of |v_l - v_(l-1)| / delta, then m = m_hat / max_d m_hat, so the largest entry is
    exactly 1. `delta` cancels in that division and cannot change the model, so it is accepted for fidelity but not
    applied. `estimator="median"` takes the median over tokens instead, as the official attack scripts did
    (ImageAttack/models.py, `--grad-median`); for an even token count torch's median is the lower middle value.
    No gradient flows through m (the official code runs under no_grad on detached inputs). Where every difference is
    zero the official code divides 0 by 0 and returns NaN; here m is then all ones (plain dot-product attention).
    """
    if estimator not in ESTIMATORS:
        raise EllbenchError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    with torch.no_grad():
        change = (values - prev_values).abs_()  # [B, H, N, D_h]
        # The mean, not the sum, keeps float16 in range for long sequences; its 1 / N cancels like delta.
        m_hat = change.mean(dim=-2) if estimator == "mean" else change.median(dim=-2).values  # [B, H, D_h]
        # All-zero change: 0 / 0 = NaN in every coordinate, which becomes the unit metric.
        return (m_hat / m_hat.amax(dim=-1, keepdim=True)).nan_to_num_(nan=1.0)


def elliptical_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    relevance: torch.Tensor | None = None,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    fused: bool = True,
) -> torch.Tensor:
    """softmax(Q M K^T / sqrt(D_h)) V for q, k, v [B, H, N, D_h] and M = diag(relevance [B, H, D_h]); [B, H, N, D_h].

    `relevance=None` is plain dot-product attention. The fused path uses q M K^T = (q * m) K^T, since M is diagonal,
    and hands the product to `F.scaled_dot_product_attention` (flash / memory-efficient / CPU kernels). The reference
    path builds M with diag_embed and the explicit softmax, as the official code does (ImageNet/models.py:296-305).
    """
    if fused:
        if relevance is not None:
            q = q * relevance.unsqueeze(-2)  # [B, H, N, D_h]: m broadcast over tokens
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    if relevance is not None:
        q = q @ torch.diag_embed(relevance)  # [B, H, N, D_h] @ [B, H, D_h, D_h]
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # [B, H, N, N]
    scores = maybe_add_mask(scores, resolve_self_attn_mask(q.shape[-2], scores, attn_mask, is_causal))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v


class EllipticalAttention(Attention):
    """timm's `Attention` with the elliptical metric; same constructor, parameters and state-dict names.

    `forward(x, prev_values=...)` uses the previous block's values [B, H, N, D_h] to estimate M; without them it is
    plain dot-product attention. With `return_values=True` it returns `(output [B, N, C], values [B, H, N, D_h])`, the
    form `EllipticalBlock` uses; otherwise only the output, as timm's `Attention` does.
    `fused_attn=None` follows timm's setting (env TIMM_FUSED_ATTN, default on); False selects the reference path.
    """

    def __init__(self, dim: int, *args, estimator: str = "mean", delta: float = 5.0, fused_attn=None, **kwargs):
        super().__init__(dim, *args, **kwargs)
        if estimator not in ESTIMATORS:
            raise EllbenchError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if not delta > 0:
            raise EllbenchError(f"delta must be positive, got {delta}")
        self.estimator = estimator
        self.delta = delta
        self.fused_attn = use_fused_attn() if fused_attn is None else bool(fused_attn)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prev_values: torch.Tensor | None = None,
        return_values: bool = False,
    ):
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, D_h]
        q, k = self.q_norm(q), self.k_norm(k)

        relevance = None
        if prev_values is not None:
            relevance = coordinate_relevance(v, prev_values, estimator=self.estimator, delta=self.delta)
        out = elliptical_attention(
            q, k, v, relevance,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            fused=self.fused_attn,
        )
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))  # [B, N, H * D_h]
        if gate is not None:
            out = out * gate
        out = self.proj_drop(self.proj(out))  # [B, N, C]
        return (out, v) if return_values else out

    def extra_repr(self) -> str:
        return f"estimator={self.estimator}, delta={self.delta}, fused_attn={self.fused_attn}"


class EllipticalBlock(Block):
    """Pre-norm ViT block that takes the previous block's values and returns `(x, its own values)`.

    Its two halves are also callable on their own (`attend`, then `feed_forward`), so that a loop over blocks can let
    go of the previous block's values, and of the block's input, before the MLP's large activations are made.
    """

    def attend(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prev_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x + attention(norm1(x)) [B, N, C] and this block's values [B, H, N, D_h]."""
        attn_out, values = self.attn(
            self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, prev_values=prev_values, return_values=True
        )
        return x + self.drop_path1(self.ls1(attn_out)), values

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + mlp(norm2(x)) [B, N, C]."""
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prev_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, values = self.attend(x, attn_mask, is_causal, prev_values)
        return self.feed_forward(x), values


class EllipticalVisionTransformer(VisionTransformer):
    """timm's VisionTransformer whose blocks pass their values on; blocks in `elliptical_blocks` use the metric.

    `elliptical_blocks` defaults to every block but the first (the official `--M-positions 1 .. 11`); block 0 cannot be
    elliptical, having no predecessor. `estimator`, `delta` and `fused_attn` go to every `EllipticalAttention`.
    """

    def __init__(
        self,
        *args,
        elliptical_blocks: Sequence[int] | None = None,
        estimator: str = "mean",
        delta: float = 5.0,
        fused_attn: bool | None = None,
        **kwargs,
    ):
        attn_layer = bind_attn_layer(EllipticalAttention, estimator=estimator, delta=delta, fused_attn=fused_attn)
        super().__init__(*args, block_fn=EllipticalBlock, attn_layer=attn_layer, **kwargs)
        depth = len(self.blocks)
        chosen = tuple(range(1, depth)) if elliptical_blocks is None else tuple(sorted(set(elliptical_blocks)))
        if any(not 1 <= index < depth for index in chosen):
            raise EllbenchError(f"elliptical_blocks must lie in 1..{depth - 1} (block 0 has no predecessor): {chosen}")
        self.elliptical_blocks = chosen

    def _run_blocks(self, x, blocks, attn_mask=None, is_causal=False, take_indices=()):
        """Tokens after the last of `blocks`, and after each block in `take_indices`; values go block to block."""
        values, taken = None, []
        for index, block in enumerate(blocks):
            use_metric = index in self.elliptical_blocks
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, values = checkpoint(block, x, attn_mask, is_causal, values if use_metric else None,
                                       use_reentrant=False)
            else:
                # Rebinding x and values after the attention frees the block's input and the previous values
                # before the MLP runs (nn.Sequential, as in timm's DeiT, keeps a block's input to its end).
                x, values = block.attend(x, attn_mask, is_causal, values if use_metric else None)
                x = block.feed_forward(x)
            if index in take_indices:
                taken.append(x)
        return x, taken

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # [B, N, C]

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x, _ = self._run_blocks(self._embed(x), self.blocks, attn_mask, is_causal)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices=None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask=None,
        is_causal: bool = False,
    ):
        """timm's forward_intermediates (same arguments and results) with values threaded between blocks."""
        if output_fmt not in ("NCHW", "NLC"):
            raise EllbenchError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        x, intermediates = self._run_blocks(self._embed(x), blocks, attn_mask, is_causal, take_indices)
        if norm:
            intermediates = [self.norm(y) for y in intermediates]

        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates] if self.num_prefix_tokens else None
        intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            result = {"image_intermediates": intermediates}
            if prefix is not None and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                result["image_features"] = self.norm(x)
            return result
        if return_prefix_tokens and prefix is not None:
            intermediates = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def _create(variant: str, pretrained: bool = False, **kwargs) -> EllipticalVisionTransformer:
    return create_vit(variant, model_cls=EllipticalVisionTransformer, pretrained=pretrained, **kwargs)


@register_model
def elliptical_tiny_patch16_224(pretrained=False, **kwargs) -> EllipticalVisionTransformer:
    """Elliptical DeiT-Tiny: 192 wide, 3 heads of 64."""
    return _create("elliptical_tiny_patch16_224", pretrained, **kwargs)


@register_model
def elliptical_tiny6h_patch16_224(pretrained=False, **kwargs) -> EllipticalVisionTransformer:
    """Elliptical DeiT-Tiny with 6 heads of 32 (the paper's heads ablation, Table 10)."""
    return _create("elliptical_tiny6h_patch16_224", pretrained, **kwargs)


@register_model
def elliptical_small_patch16_224(pretrained=False, **kwargs) -> EllipticalVisionTransformer:
    """Elliptical DeiT-Small: 384 wide, 6 heads of 64."""
    return _create("elliptical_small_patch16_224", pretrained, **kwargs)


@register_model
def elliptical_base_patch16_224(pretrained=False, **kwargs) -> EllipticalVisionTransformer:
    """Elliptical DeiT-Base: 768 wide, 12 heads of 64."""
    return _create("elliptical_base_patch16_224", pretrained, **kwargs)


@register_model
def elliptical_micro_patch4_32(pretrained=False, **kwargs) -> EllipticalVisionTransformer:
    """Elliptical small-image model (32 px, patch 4, 6 blocks of width 128, 4 heads), the twin of deit_micro."""
    return _create("elliptical_micro_patch4_32", pretrained, **kwargs)
