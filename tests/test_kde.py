"""KDE, RKDE and MoM attention against explicit per-element references written with loops (float64)."""

import math

import numpy as np
import pytest
import timm
import torch

import ellbench.models  # noqa: F401  (registers the models)
from ellbench.errors import EllbenchError
from ellbench.models.kde import (
    KDEAttention,
    MoMAttention,
    RKDEAttention,
    robust_kde_log_weights,
    robust_psi,
)

DIM, HEADS, TOKENS, BATCH = 8, 2, 6, 2
HEAD_DIM = DIM // HEADS
SCALE = HEAD_DIM**-0.5


# ---------------------------------------------------------------- loop references (no tensor algebra beyond scalars)


def split_heads(module, x):
    """q, k_hat, v as nested lists [b][h][n][d] from the module's projection, computed with explicit sums."""
    w, bias = module.qkv.weight.tolist(), module.qkv.bias.tolist()
    out = [[[[0.0] * HEAD_DIM for _ in range(TOKENS)] for _ in range(HEADS)] for _ in range(3 * BATCH)]
    for b in range(BATCH):
        for n in range(TOKENS):
            row = x[b, n].tolist()
            for o in range(3 * DIM):
                value = bias[o] + sum(w[o][c] * row[c] for c in range(DIM))
                which, h, d = o // DIM, (o % DIM) // HEAD_DIM, o % HEAD_DIM
                out[which * BATCH + b][h][n][d] = value
    q, k, v = out[:BATCH], out[BATCH : 2 * BATCH], out[2 * BATCH :]
    for b in range(BATCH):
        for h in range(HEADS):
            for n in range(TOKENS):
                norm = math.sqrt(sum(c * c for c in k[b][h][n]))
                k[b][h][n] = [c / norm for c in k[b][h][n]]
    return q, k, v


def merge_heads(module, heads_out):
    """Concatenate heads [b][h][n][d] and apply the output projection, with explicit sums -> tensor [B, N, C]."""
    w, bias = module.proj.weight.tolist(), module.proj.bias.tolist()
    result = torch.zeros(BATCH, TOKENS, DIM, dtype=torch.float64)
    for b in range(BATCH):
        for n in range(TOKENS):
            row = [heads_out[b][h][n][d] for h in range(HEADS) for d in range(HEAD_DIM)]
            for o in range(DIM):
                result[b, n, o] = bias[o] + sum(w[o][c] * row[c] for c in range(DIM))
    return result


def sq_dist(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def weighted_kernel_attention(q_i, keys, values, num_weights, den_weights):
    """sum_j num_j K(q_i, k_j) v_j / sum_j den_j K(q_i, k_j), K Gaussian at scale SCALE."""
    kernels = [math.exp(-SCALE * sq_dist(q_i, k_j)) for k_j in keys]
    den = sum(w * kern for w, kern in zip(den_weights, kernels, strict=True))
    return [
        sum(w * kern * v_j[d] for w, kern, v_j in zip(num_weights, kernels, values, strict=True)) / den
        for d in range(HEAD_DIM)
    ]


def loop_kde(module, x, subsets=None):
    """KDE attention per element; `subsets[b]` restricts the keys/values of sample b (MoM)."""
    q, k, v = split_heads(module, x)
    out = [[None] * HEADS for _ in range(BATCH)]
    for b in range(BATCH):
        keep = subsets[b] if subsets is not None else list(range(TOKENS))
        for h in range(HEADS):
            keys, values = [k[b][h][j] for j in keep], [v[b][h][j] for j in keep]
            ones = [1.0] * len(keep)
            out[b][h] = [weighted_kernel_attention(q[b][h][i], keys, values, ones, ones) for i in range(TOKENS)]
    return merge_heads(module, out)


def loop_psi(h, loss, a):
    if loss == "huber":
        return 1.0 if h <= a else a / h
    b, c = 2 * a, 3 * a
    if h < a:
        return 1.0
    if h < b:
        return a / h
    if h < c:
        return a * (c - h) / ((c - b) * h)
    return 0.01


def loop_robust_weights(points, loss, a, num_iter, form):
    """KIRWLS weights [b][h][n] of point sets points[b][h] = list of vectors, Gaussian kernel at SCALE."""
    kern = [[[[math.exp(-SCALE * sq_dist(p, r)) for r in ph] for p in ph] for ph in pb] for pb in points]
    w = [[[1.0 / TOKENS] * TOKENS for _ in range(HEADS)] for _ in range(BATCH)]
    for step in range(num_iter):
        new = [[None] * HEADS for _ in range(BATCH)]
        for b in range(BATCH):
            for h in range(HEADS):
                K, wt = kern[b][h], w[b][h]
                kw = [sum(wt[j] * K[i][j] for j in range(TOKENS)) for i in range(TOKENS)]
                wkw = sum(wt[j] * wt[m] * K[j][m] for j in range(TOKENS) for m in range(TOKENS))
                sign = 1.0 if form == "official" else -2.0
                dist = [math.sqrt(max(1.0 + sign * kw[i] + wkw, 1e-12)) for i in range(TOKENS)]
                phi = [loop_psi(d, loss, a) for d in dist]
                new[b][h] = [p / sum(phi) for p in phi]
        if step + 1 < num_iter and form == "official":  # the authors average over batch and heads in between
            mean = [
                sum(new[b][h][n] for b in range(BATCH) for h in range(HEADS)) / (BATCH * HEADS) for n in range(TOKENS)
            ]
            new = [[list(mean) for _ in range(HEADS)] for _ in range(BATCH)]
        w = new
    return w


def loop_rkde(module, x, loss, a, num_iter, form):
    q, k, v = split_heads(module, x)
    joint = [[[k[b][h][n] + v[b][h][n] for n in range(TOKENS)] for h in range(HEADS)] for b in range(BATCH)]
    w_k = loop_robust_weights(k, loss, a, num_iter, form)
    w_kv = loop_robust_weights(joint, loss, a, num_iter, form)
    out = [
        [
            [weighted_kernel_attention(q[b][h][i], k[b][h], v[b][h], w_kv[b][h], w_k[b][h]) for i in range(TOKENS)]
            for h in range(HEADS)
        ]
        for b in range(BATCH)
    ]
    return merge_heads(module, out)


def loop_subset_likelihoods(module, x, subsets):
    """L_S per sample: sum over heads, queries i and keys j in S of -s |q_i - k^_j|^2 -> [b][subset]."""
    q, k, _ = split_heads(module, x)
    return [
        [
            sum(-SCALE * sq_dist(q[b][h][i], k[b][h][j]) for h in range(HEADS) for i in range(TOKENS) for j in subset)
            for subset in subsets
        ]
        for b in range(BATCH)
    ]


# ---------------------------------------------------------------- fixtures


def make(cls, **options):
    torch.manual_seed(0)
    module = cls(DIM, HEADS, qkv_bias=True, **options).double().eval()
    return module


@pytest.fixture
def x():
    return torch.randn(BATCH, TOKENS, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ---------------------------------------------------------------- KDE


@pytest.mark.parametrize("fused", [True, False])
def test_kde_matches_loop_reference(x, fused):
    module = make(KDEAttention, fused_attn=fused)
    torch.testing.assert_close(module(x), loop_kde(module, x), rtol=1e-10, atol=1e-12)


def test_kde_masks_agree_between_fused_and_explicit_paths(x):
    fused, explicit = make(KDEAttention, fused_attn=True), make(KDEAttention, fused_attn=False)
    bias = torch.randn(TOKENS, TOKENS, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    keep = torch.rand(TOKENS, TOKENS, generator=torch.Generator().manual_seed(3)) > 0.3
    keep.fill_diagonal_(True)
    for mask in (bias, keep):
        torch.testing.assert_close(fused(x, attn_mask=mask), explicit(x, attn_mask=mask), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused(x, is_causal=True), explicit(x, is_causal=True), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(fused(x, attn_mask=bias), fused(x))


# ---------------------------------------------------------------- RKDE


def test_robust_psi_hand_values():
    h = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    # Huber a = 0.2: 1 below a, a / h above.
    torch.testing.assert_close(robust_psi(h, "huber", 0.2), torch.tensor([1.0, 2 / 3, 0.4, 0.2 / 0.7], **f64))
    # Hampel a = 0.2 (b = 0.4, c = 0.6): 1; a/h = 2/3; a (c - h) / ((c - b) h) = 0.2 * 0.1 / (0.2 * 0.5) = 0.2; 0.01.
    torch.testing.assert_close(robust_psi(h, "hampel", 0.2), torch.tensor([1.0, 2 / 3, 0.2, 0.01], **f64))


# Three unit-diagonal Gram entries: points 0 and 1 close (K = 0.5), point 2 an outlier (K = 0).
HAND_KERNEL = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)[None, None]


def test_rkde_weights_hand_worked_case():
    # w = 1/3: sum_j w_j K_ij = (1/2, 1/2, 1/3); sum_jl w_j w_l K_jl = 4/9.
    # textbook h^2 = 1 - 2 Kw + wKw = (4/9, 4/9, 7/9) -> Huber(0.2) weights prop. to 1/h = (3/2, 3/2, 3/sqrt 7):
    # the outlier is down-weighted.
    textbook = torch.tensor([1.5, 1.5, 3 / math.sqrt(7)], dtype=torch.float64)
    log_w = robust_kde_log_weights(HAND_KERNEL, loss="huber", a=0.2, form="textbook")
    torch.testing.assert_close(log_w.exp()[0, 0], textbook / textbook.sum())
    # official h^2 = 1 + Kw + wKw = (35/18, 35/18, 16/9) -> weights prop. to (sqrt(18/35), sqrt(18/35), 3/4):
    # the authors' "+" up-weights the outlier.
    official = torch.tensor([math.sqrt(18 / 35), math.sqrt(18 / 35), 0.75], dtype=torch.float64)
    log_w = robust_kde_log_weights(HAND_KERNEL, loss="huber", a=0.2, form="official")
    torch.testing.assert_close(log_w.exp()[0, 0], official / official.sum())
    # Hampel a = 0.2 (c = 0.6) under the official form: every h >= 1 lands on the 0.01 floor, so weights are uniform.
    log_w = robust_kde_log_weights(HAND_KERNEL, loss="hampel", a=0.2, form="official")
    torch.testing.assert_close(log_w.exp()[0, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    # Hampel a = 0.4 (b = 0.8, c = 1.2), textbook: h = (2/3, 2/3, sqrt 7 / 3) -> (a/h, a/h, a (c - h) / ((c - b) h)).
    h_out = math.sqrt(7) / 3
    hampel = torch.tensor([0.6, 0.6, 0.4 * (1.2 - h_out) / (0.4 * h_out)], dtype=torch.float64)
    log_w = robust_kde_log_weights(HAND_KERNEL, loss="hampel", a=0.4, form="textbook")
    torch.testing.assert_close(log_w.exp()[0, 0], hampel / hampel.sum())


RKDE_SETTINGS = [
    dict(loss="huber", huber_a=0.2, num_iter=1, kirwls="official"),
    dict(loss="huber", huber_a=0.2, num_iter=3, kirwls="official"),
    dict(loss="hampel", huber_a=0.4, num_iter=2, kirwls="textbook"),
    dict(loss="huber", huber_a=1.5, num_iter=2, kirwls="textbook"),
]


@pytest.mark.parametrize("settings", RKDE_SETTINGS, ids=lambda s: f"{s['loss']}-{s['num_iter']}-{s['kirwls']}")
@pytest.mark.parametrize("fused", [True, False])
def test_rkde_matches_loop_reference(x, settings, fused):
    module = make(RKDEAttention, fused_attn=fused, **settings)
    expected = loop_rkde(module, x, settings["loss"], settings["huber_a"], settings["num_iter"], settings["kirwls"])
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- MoM


@pytest.mark.parametrize("median_over", ["batch", "sample"])
@pytest.mark.parametrize("fused", [True, False])
def test_mom_picks_the_median_subset_and_attends_over_it(x, fused, median_over):
    module = make(MoMAttention, fused_attn=fused, num_subsets=5, outlier_fraction=0.34, median_over=median_over, seed=3)
    subsets = module.sample_subsets(TOKENS).tolist()
    assert all(len(s) == int(TOKENS * 0.66) == 3 and s == sorted(s) and len(set(s)) == 3 for s in subsets)
    likelihoods = loop_subset_likelihoods(module, x, subsets)
    if median_over == "batch":
        total = [sum(per_sample[s] for per_sample in likelihoods) for s in range(5)]
        likelihoods = [total] * BATCH
    median = [sorted(range(5), key=lambda s, row=row: row[s])[2] for row in likelihoods]
    with torch.no_grad():
        qkv = module.qkv(x).reshape(BATCH, TOKENS, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], torch.nn.functional.normalize(qkv[1], dim=-1)
        chosen = module.median_subset(q, k, torch.tensor(subsets))
    assert chosen.tolist() == median
    expected = loop_kde(module, x, subsets=[subsets[m] for m in median])
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-12)


def test_mom_fused_and_reference_agree_on_a_model():
    torch.manual_seed(0)
    fused = timm.create_model("mom_micro_patch4_32", fused_attn=True, seed=7, img_size=16).double().eval()
    explicit = timm.create_model("mom_micro_patch4_32", fused_attn=False, seed=7, img_size=16).double().eval()
    explicit.load_state_dict(fused.state_dict())
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(fused(images), explicit(images), rtol=1e-9, atol=1e-10)


def test_seeded_mom_is_deterministic_and_ignores_global_rng(x):
    module = make(MoMAttention, seed=11, outlier_fraction=0.5)
    torch.manual_seed(123)
    np.random.seed(123)
    first = module(x)
    torch.manual_seed(456)
    np.random.seed(456)
    torch.testing.assert_close(module(x), first, rtol=0, atol=0)
    twin = make(MoMAttention, seed=11, outlier_fraction=0.5)
    torch.testing.assert_close(twin(x), first, rtol=0, atol=0)
    other = make(MoMAttention, seed=12, outlier_fraction=0.5)
    assert not torch.equal(other.sample_subsets(TOKENS), module.sample_subsets(TOKENS))
    assert "sampling=seeded, seed=11" in repr(module)


def test_seeded_mom_training_draws_fresh_reproducible_subsets():
    module = make(MoMAttention, seed=5, outlier_fraction=0.5).train()
    draws = [module.sample_subsets(TOKENS) for _ in range(3)]
    assert not (torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2]))
    module.reseed(5)
    assert all(torch.equal(module.sample_subsets(TOKENS), d) for d in draws)


def test_numpy_sampling_follows_the_global_numpy_rng_like_the_authors():
    module = make(MoMAttention, sampling="numpy", num_subsets=3, outlier_fraction=0.5)
    assert "sampling=numpy" in repr(module) and "seed=" not in repr(module)
    np.random.seed(2024)
    ours = module.sample_subsets(TOKENS).tolist()
    np.random.seed(2024)  # the authors' call: choice over arange(N), no replacement, uniform p, then sorted
    theirs = [
        sorted(np.random.choice(np.arange(TOKENS), size=3, replace=False, p=np.ones(TOKENS) / TOKENS).tolist())
        for _ in range(3)
    ]
    assert ours == theirs
    assert any(module.sample_subsets(TOKENS).tolist() != ours for _ in range(5))  # fresh draw every call


def test_mom_per_sample_median_does_not_depend_on_the_batch(x):
    module = make(MoMAttention, median_over="sample", outlier_fraction=0.5, num_subsets=7)
    torch.testing.assert_close(module(x)[:1], module(x[:1]), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("family", ["kde", "rkde", "mom"])
def test_stock_deit_weights_load_strictly(family):
    deit = timm.create_model("deit_tiny_patch16_224")
    model = timm.create_model(f"{family}_tiny_patch16_224")
    model.load_state_dict(deit.state_dict(), strict=True)
    assert sum(p.numel() for p in model.parameters()) == 5_717_416  # DeiT-Ti: no parameters added


@pytest.mark.parametrize("family", ["kde", "rkde", "mom"])
def test_micro_models_train_a_step(family):
    torch.manual_seed(0)
    model = timm.create_model(f"{family}_micro_patch4_32", num_classes=10, img_size=16)
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_attention_options_pass_through_create_model():
    model = timm.create_model("rkde_micro_patch4_32", loss="hampel", huber_a=0.4, num_iter=2, fused_attn=False)
    attn = model.blocks[0].attn
    assert (attn.loss, attn.huber_a, attn.num_iter, attn.fused_attn) == ("hampel", 0.4, 2, False)
    mom = timm.create_model("mom_micro_patch4_32", seed=10, num_subsets=3)
    assert [b.attn.seed for b in mom.blocks] == list(range(10, 16)) and mom.blocks[0].attn.num_subsets == 3


@pytest.mark.parametrize(
    "name, options",
    [
        ("rkde_micro_patch4_32", dict(loss="tukey")),
        ("rkde_micro_patch4_32", dict(num_iter=0)),
        ("rkde_micro_patch4_32", dict(kirwls="paper")),
        ("mom_micro_patch4_32", dict(sampling="python")),
        ("mom_micro_patch4_32", dict(outlier_fraction=1.0)),
    ],
)
def test_bad_attention_options_are_one_line_user_errors(name, options):
    with pytest.raises(EllbenchError, match=next(iter(options))):
        timm.create_model(name, **options)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("family", ["rkde", "mom"])
def test_bfloat16_autocast_stays_close_to_float32(family, fused):
    torch.manual_seed(0)
    model = timm.create_model(f"{family}_micro_patch4_32", fused_attn=fused, img_size=16).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        full = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, rtol=0.1, atol=0.1)
