"""DeiT with kernel-density attention: KDE, robust KDE (RKDE) and median-of-means (MoM) attention.

Han et al., "Designing Robust Transformers using Robust Kernel Density Estimation" (NeurIPS 2023); the
Elliptical Attention paper (Nielsen et al., NeurIPS 2024) compares against DeiT-KDE, DeiT-RKDE and DeiT-MoM.
Attention is read as a kernel density estimator over the keys: with unit keys k^_j = k_j / |k_j| and the Gaussian
kernel K(x, y) = exp(-s |x - y|^2), s = D_h^-1/2,

    KDE:   A_ij = exp(-s |q_i - k^_j|^2) / sum_j' exp(-s |q_i - k^_j'|^2)
    RKDE:  A_ij = w^kv_j exp(-s |q_i - k^_j|^2) / sum_j' w^k_j' exp(-s |q_i - k^_j'|^2)
    MoM:   KDE attention restricted to the token subset whose total log-likelihood is the median of K subsets.

Since |k^_j| = 1, -s |q_i - k^_j|^2 = 2 s q_i.k^_j - s |q_i|^2 - s and the last two terms cancel in the softmax,
so every variant is scaled dot-product attention with scale 2 s over the unit keys: the fused paths call
F.scaled_dot_product_attention, RKDE's weights entering as an additive log-bias. `fused_attn=False` selects the explicit
form of the authors' code (pairwise distances, log-space arithmetic), kept as the reference.

Every class subclasses timm's Attention and keeps its parameter names, so a stock timm DeiT state dict loads
strictly into DeiT-KDE/RKDE/MoM.
"""

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention, resolve_self_attn_mask, use_fused_attn
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from ellbench.errors import EllbenchError
from ellbench.models.vit import bind_attn_layer, create_vit

RobustLoss = Literal["huber", "hampel"]
KirwlsForm = Literal["official", "textbook"]


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances: [..., N, D] x [..., M, D] -> [..., N, M]."""
    return torch.cdist(x, y, p=2.0).square()


class KDEAttention(Attention):
    """Multi-head attention as a Gaussian kernel density estimator over L2-normalised keys (DeiT-KDE).

    Args (beyond timm's Attention):
        fused_attn: use F.scaled_dot_product_attention (default: timm's `use_fused_attn()`, i.e. TIMM_FUSED_ATTN);
            False computes the explicit kernel form of the authors' code.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, fused_attn: bool | None = None, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.fused_attn = use_fused_attn() if fused_attn is None else bool(fused_attn)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, D_h]
        q, k = self.q_norm(q), self.k_norm(k)
        k = F.normalize(k, dim=-1)  # unit keys: the Gaussian kernel becomes a dot product
        out = self._attend(q, k, v, attn_mask, is_causal)  # [B, H, N, D_h]
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0

    def _attend(self, q, k, v, attn_mask, is_causal):
        if self.fused_attn:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self._dropout_p(), is_causal=is_causal, scale=2 * self.scale
            )
        logits = -self.scale * _sq_dist(q, k)  # [B, H, N, N] log Gaussian kernel
        bias = resolve_self_attn_mask(q.shape[-2], logits, attn_mask, is_causal)
        if bias is not None:
            logits = logits + bias
        return self.attn_drop(logits.softmax(dim=-1)) @ v

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, fused_attn={self.fused_attn}"


def _no_mask(name: str, attn_mask, is_causal) -> None:
    if attn_mask is not None or is_causal:
        raise EllbenchError(f"{name} attention weights all tokens of the sequence; masks are not supported")


def robust_psi(h: torch.Tensor, loss: RobustLoss, a: float) -> torch.Tensor:
    """Weight function phi(h) = psi(h) / h of the robust loss, at RKHS distances h >= 0.

    Huber: 1 for h <= a, a / h above. Hampel (b = 2a, c = 3a): 1 below a, a / h on [a, b),
    a (c - h) / ((c - b) h) on [b, c), and 0.01 from c on (the authors' floor, instead of 0, keeps log finite).
    """
    if loss == "huber":
        return torch.where(h <= a, torch.ones_like(h), a / h)
    if loss == "hampel":
        b, c = 2 * a, 3 * a
        return torch.where(
            h < a,
            torch.ones_like(h),
            torch.where(h < b, a / h, torch.where(h < c, a * (c - h) / ((c - b) * h), torch.full_like(h, 0.01))),
        )
    raise EllbenchError(f"unknown robust loss {loss!r}; expected 'huber' or 'hampel'")


def robust_kde_log_weights(
    kernel: torch.Tensor,
    *,
    loss: RobustLoss = "huber",
    a: float = 0.2,
    num_iter: int = 1,
    form: KirwlsForm = "official",
) -> torch.Tensor:
    """Log-weights of a robust KDE by kernelised iteratively re-weighted least squares (KIRWLS).

    kernel: [B, H, N, N] Gram matrix K_jl of the sample; returns log w of shape [B, H, N] (w sums to 1 over N).
    Starting from w = 1/N, each iteration takes the RKHS distance of every point to the weighted mean,
        textbook:  h_i^2 = K_ii - 2 sum_j w_j K_ij + sum_jl w_j w_l K_jl   (K_ii = 1 for the Gaussian kernel)
        official:  h_i^2 = 1 + sum_j w_j K_ij + sum_jl w_j w_l K_jl         (the authors' code: "+", coefficient 1)
    and sets w_i proportional to phi(h_i). Between iterations the official code averages w over batch and heads
    (so with num_iter > 1 a sample's weights depend on the rest of its batch); the textbook form keeps them per
    sample and head. Note that in the official form h >= 1, so Huber with a < 1 gives w proportional to 1/h and
    Hampel with c = 3a <= 1 gives uniform weights (plain KDE).
    """
    if num_iter < 1:
        raise EllbenchError(f"num_iter must be >= 1, got {num_iter}")
    if form not in ("official", "textbook"):
        raise EllbenchError(f"unknown KIRWLS form {form!r}; expected 'official' or 'textbook'")
    n = kernel.shape[-1]
    w = kernel.new_full(kernel.shape[:-1], 1.0 / n)  # [B, H, N]
    for step in range(num_iter):
        kw = (kernel @ w.unsqueeze(-1)).squeeze(-1)  # [B, H, N]: sum_j w_j K_ij
        wkw = (w * kw).sum(-1, keepdim=True)  # [B, H, 1]: sum_jl w_j w_l K_jl
        h_sq = 1 + kw + wkw if form == "official" else (1 - 2 * kw + wkw).clamp_min(1e-12)  # >= 0 up to rounding
        log_phi = robust_psi(h_sq.sqrt(), loss, a).log()
        log_w = log_phi - log_phi.logsumexp(dim=-1, keepdim=True)
        if step + 1 < num_iter:
            w = log_w.exp()
            if form == "official":
                w = w.mean(dim=(0, 1), keepdim=True).expand_as(w)
    return log_w


class RKDEAttention(KDEAttention):
    """Robust-KDE attention (DeiT-RKDE): KDE attention re-weighted by robust KDE weights of keys and key-values.

    The marginal weights w^k come from the Gram matrix of the unit keys, the joint weights w^kv from that of the
    concatenations [k^_j; v_j], both with the Gaussian kernel at scale s = D_h^-1/2 (see robust_kde_log_weights).
    Fused path: A = softmax(2 s q k^T + log w^k) diag(w^kv / w^k), i.e. SDPA with an additive log-bias over
    values scaled by w^kv / w^k, exact because the two weight sets only differ per key.

    Args (beyond KDEAttention): loss ('huber' | 'hampel'), huber_a (a), num_iter (KIRWLS iterations),
    kirwls ('official' arithmetic of the authors' code, or 'textbook'). Defaults: the authors' main.py.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        loss: RobustLoss = "huber",
        huber_a: float = 0.2,
        num_iter: int = 1,
        kirwls: KirwlsForm = "official",
        **kwargs,
    ):
        super().__init__(dim, num_heads, **kwargs)
        robust_psi(torch.ones(1), loss, huber_a)  # validates the loss name now rather than at the first forward
        if num_iter < 1 or kirwls not in ("official", "textbook"):
            raise EllbenchError(f"invalid RKDE settings: num_iter={num_iter}, kirwls={kirwls!r}")
        self.loss, self.huber_a, self.num_iter, self.kirwls = loss, huber_a, num_iter, kirwls

    def gaussian_grams(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian Gram matrices [B, H, N, N] of the unit keys and of the concatenations [k^_j; v_j]."""
        if not self.fused_attn:
            kv = torch.cat((k, v), dim=-1)  # [B, H, N, 2 D_h]
            return (-self.scale * _sq_dist(k, k)).exp(), (-self.scale * _sq_dist(kv, kv)).exp()
        # |k^_i - k^_j|^2 = 2 - 2 k^_i.k^_j, and the [k^; v] distance adds |v_i - v_j|^2: two matmuls, no cdist
        kernel_k = (2 * self.scale * (k @ k.transpose(-2, -1) - 1)).exp()
        v_sq = v.square().sum(-1)  # [B, H, N]
        v_dist = (v_sq.unsqueeze(-1) + v_sq.unsqueeze(-2) - 2 * v @ v.transpose(-2, -1)).clamp_min(0)
        return kernel_k, kernel_k * (-self.scale * v_dist).exp()

    def robust_log_weights(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-weights (marginal over keys, joint over key-values), each [B, H, N], in at least float32.

        Under half-precision autocast the Gram matrices and the iteration still run in float32: the weights come
        from differences of kernel sums close to each other, which bfloat16 would blur.
        """
        dtype = torch.promote_types(k.dtype, torch.float32)
        with torch.autocast(k.device.type, enabled=False):
            kernel_k, kernel_kv = self.gaussian_grams(k.to(dtype), v.to(dtype))
            options = dict(loss=self.loss, a=self.huber_a, num_iter=self.num_iter, form=self.kirwls)
            return robust_kde_log_weights(kernel_k, **options), robust_kde_log_weights(kernel_kv, **options)

    def _attend(self, q, k, v, attn_mask, is_causal):
        _no_mask("RKDE", attn_mask, is_causal)
        log_w_k, log_w_kv = self.robust_log_weights(k, v)
        if self.fused_attn:
            value_scale = (log_w_kv - log_w_k).exp().unsqueeze(-1).to(v.dtype)  # [B, H, N, 1]
            bias = log_w_k.unsqueeze(-2).to(q.dtype)  # [B, H, 1, N], broadcast over queries
            return F.scaled_dot_product_attention(
                q, k, v * value_scale, attn_mask=bias, dropout_p=self._dropout_p(), scale=2 * self.scale
            )
        logits = -self.scale * _sq_dist(q, k)  # [B, H, N, N]
        log_attn = log_w_kv.unsqueeze(-2) + logits - (log_w_k.unsqueeze(-2) + logits).logsumexp(-1, keepdim=True)
        return self.attn_drop(log_attn.exp()).to(v.dtype) @ v

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, loss={self.loss}, huber_a={self.huber_a}, num_iter={self.num_iter}, "
            f"kirwls={self.kirwls}"
        )


MomSampling = Literal["seeded", "numpy"]
MomScope = Literal["batch", "sample"]


class MoMAttention(KDEAttention):
    """Median-of-means KDE attention (DeiT-MoM).

    Draw `num_subsets` token subsets of floor(N (1 - outlier_fraction)) tokens each (uniform without replacement
    inside a subset, independent across subsets), score each by its KDE log-likelihood
    L_S = sum_{i, j in S} -s |q_i - k^_j|^2, and attend (KDE) over the subset with the median score
    (sorted position num_subsets // 2). As in the authors' code, the score sums over the whole batch and all heads,
    so one subset serves the batch (`median_over='batch'`); `median_over='sample'` picks one per sample instead.

    Sampling: 'seeded' (default) draws from a torch.Generator seeded with `seed`: in eval mode it is re-seeded at
    every forward, so the same input gives the same output in every call and process; in training mode it advances,
    giving fresh, reproducible subsets each step. 'numpy' is the authors' behaviour: NumPy's global RNG at every
    forward, so inference is stochastic. `extra_repr` shows which is used.

    Fused path: since all subsets have the same size, L_S = const + 2 s sum_{j in S} c_j with
    c_j = sum_{b,h} (sum_i q_i).k^_j, so subsets are ranked in O(N D) and SDPA runs over the gathered keys/values.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        num_subsets: int = 5,
        outlier_fraction: float = 0.1,
        sampling: MomSampling = "seeded",
        seed: int = 0,
        median_over: MomScope = "batch",
        **kwargs,
    ):
        super().__init__(dim, num_heads, **kwargs)
        if num_subsets < 1 or not 0.0 <= outlier_fraction < 1.0:
            raise EllbenchError(f"invalid MoM settings: num_subsets={num_subsets}, outlier_fraction={outlier_fraction}")
        if sampling not in ("seeded", "numpy") or median_over not in ("batch", "sample"):
            raise EllbenchError(f"invalid MoM settings: sampling={sampling!r}, median_over={median_over!r}")
        self.num_subsets, self.outlier_fraction = num_subsets, outlier_fraction
        self.sampling, self.median_over = sampling, median_over
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Set the seed of the 'seeded' sampler and restart its training-mode stream."""
        self.seed = seed
        self._train_generator = torch.Generator().manual_seed(seed)

    def subset_size(self, num_tokens: int) -> int:
        return max(1, int(num_tokens * (1 - self.outlier_fraction)))

    def sample_subsets(self, num_tokens: int) -> torch.Tensor:
        """Token indices of the candidate subsets, [num_subsets, subset_size], each row sorted (CPU, int64)."""
        size = self.subset_size(num_tokens)
        if self.sampling == "numpy":
            uniform = np.full(num_tokens, 1.0 / num_tokens)  # passing p, as the authors do, selects the same algorithm
            rows = [
                np.sort(np.random.choice(num_tokens, size=size, replace=False, p=uniform))
                for _ in range(self.num_subsets)
            ]
            return torch.from_numpy(np.stack(rows)).long()
        generator = self._train_generator if self.training else torch.Generator().manual_seed(self.seed)
        rows = [torch.randperm(num_tokens, generator=generator)[:size] for _ in range(self.num_subsets)]
        return torch.stack(rows).sort(dim=-1).values

    def median_subset(self, q: torch.Tensor, k: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """Index (into subsets) of the median-likelihood subset: [B] (one value repeated for median_over='batch').

        The scores are computed in at least float32, also under half-precision autocast: the choice is discrete, and
        bfloat16 sums over the batch and heads could rank close subsets differently from float32.
        """
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
            q, k = q.to(dtype), k.to(dtype)
            if self.fused_attn:
                key_score = (q.sum(dim=-2, keepdim=True) * k).sum(-1)  # [B, H, N]: (sum_i q_i).k^_j
                key_score = key_score.sum(dim=1)  # [B, N]
                scores = key_score[:, subsets].sum(-1)  # [B, num_subsets], = (L_S - const) / 2s
            else:
                scores = torch.stack(
                    [(-self.scale * _sq_dist(q, k[:, :, idx])).sum(dim=(1, 2, 3)) for idx in subsets], dim=-1
                )  # [B, num_subsets]: L_S per sample
            if self.median_over == "batch":
                scores = scores.sum(dim=0, keepdim=True).expand(q.shape[0], -1)
            return scores.argsort(dim=-1, stable=True)[:, self.num_subsets // 2]

    def _attend(self, q, k, v, attn_mask, is_causal):
        _no_mask("MoM", attn_mask, is_causal)
        subsets = self.sample_subsets(q.shape[-2]).to(q.device)  # [K, S]
        chosen = subsets[self.median_subset(q, k, subsets)]  # [B, S]
        index = chosen[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])  # [B, H, S, D_h]
        k_sub, v_sub = k.gather(2, index), v.gather(2, index)  # [B, H, S, D_h]
        return super()._attend(q, k_sub, v_sub, None, False)

    def extra_repr(self) -> str:
        seed = f", seed={self.seed}" if self.sampling == "seeded" else ""
        return (
            f"{super().extra_repr()}, num_subsets={self.num_subsets}, outlier_fraction={self.outlier_fraction}, "
            f"sampling={self.sampling}{seed}, median_over={self.median_over}"
        )


# Attention options a variant accepts through timm.create_model(name, **options); the rest go to the ViT.
ATTENTION_OPTIONS = {
    KDEAttention: ("fused_attn",),
    RKDEAttention: ("fused_attn", "loss", "huber_a", "num_iter", "kirwls"),
    MoMAttention: ("fused_attn", "num_subsets", "outlier_fraction", "sampling", "seed", "median_over"),
}


def _create(variant: str, attn_cls: type, pretrained: bool, **kwargs) -> VisionTransformer:
    """A DeiT of the variant's size with `attn_cls` in every block; attention options are split off kwargs."""
    options = {name: kwargs.pop(name) for name in ATTENTION_OPTIONS[attn_cls] if name in kwargs}
    model = create_vit(variant, attn_layer=bind_attn_layer(attn_cls, **options), pretrained=pretrained, **kwargs)
    if attn_cls is MoMAttention:
        base_seed = options.get("seed", 0)
        for depth, block in enumerate(model.blocks):  # layers draw different subsets, as with the official RNG
            block.attn.reseed(base_seed + depth)
    return model


@register_model
def kde_tiny_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("kde_tiny_patch16_224", KDEAttention, pretrained, **kwargs)


@register_model
def kde_small_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("kde_small_patch16_224", KDEAttention, pretrained, **kwargs)


@register_model
def kde_base_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("kde_base_patch16_224", KDEAttention, pretrained, **kwargs)


@register_model
def kde_micro_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("kde_micro_patch4_32", KDEAttention, pretrained, **kwargs)


@register_model
def rkde_tiny_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("rkde_tiny_patch16_224", RKDEAttention, pretrained, **kwargs)


@register_model
def rkde_small_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("rkde_small_patch16_224", RKDEAttention, pretrained, **kwargs)


@register_model
def rkde_base_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("rkde_base_patch16_224", RKDEAttention, pretrained, **kwargs)


@register_model
def rkde_micro_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("rkde_micro_patch4_32", RKDEAttention, pretrained, **kwargs)


@register_model
def mom_tiny_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("mom_tiny_patch16_224", MoMAttention, pretrained, **kwargs)


@register_model
def mom_small_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("mom_small_patch16_224", MoMAttention, pretrained, **kwargs)


@register_model
def mom_base_patch16_224(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("mom_base_patch16_224", MoMAttention, pretrained, **kwargs)


@register_model
def mom_micro_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("mom_micro_patch4_32", MoMAttention, pretrained, **kwargs)
