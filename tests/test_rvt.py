"""RVT: parameter counts of the official variants, PAAS attention against a loop reference, structure and cfgs."""

import functools
import math

import pytest
import timm
import torch

import ellbench.models  # noqa: F401  (registers the models)
from ellbench.errors import EllbenchError
from ellbench.models.rvt import PAASAttention

# (base_dims, depths, heads, masked_blocks) of the official robust_models.py registrations.
OFFICIAL = {
    "rvt_tiny": ((32, 32), (10, 2), (6, 12), 0),
    "rvt_small": ((64,), (12,), (6,), 0),
    "rvt_base": ((64,), (12,), (12,), 0),
    "rvt_tiny_plus": ((32, 32), (10, 2), (6, 12), 10),
    "rvt_small_plus": ((64,), (12,), (6,), 5),
    "rvt_base_plus": ((64,), (12,), (12,), 5),
}


def official_param_count(base_dims, depths, heads, masked_blocks, num_classes=1000, tokens=196):
    """Parameters of the official architecture, layer by layer (weights + biases; BN/LN: 2 per channel)."""
    dims = [b * h for b, h in zip(base_dims, heads, strict=True)]
    total = (3 * 32 * 7 * 7 + 32) + 2 * 32 + (32 * dims[0] * 4 * 4 + dims[0])  # stem: conv7, BN, conv4
    for stage, (d, depth) in enumerate(zip(dims, depths, strict=True)):
        attention = (d * 3 * d + 3 * d) + (d * d + d)
        if d == 768:  # the official Mlp falls back to two Linear layers at width 768
            mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
        else:  # 1x1 conv, BN, 3x3 depthwise conv, BN, 1x1 conv, BN
            mlp = (d * 4 * d + 4 * d) + 2 * 4 * d + (4 * d * 9 + 4 * d) + 2 * 4 * d + (4 * d * d + d) + 2 * d
        total += depth * (2 * d + attention + 2 * d + mlp)
        if stage + 1 < len(dims):  # conv_head_pooling: groups = in channels, kernel 3
            total += dims[stage + 1] * 9 + dims[stage + 1]
    total += masked_blocks * heads[0] * tokens * tokens  # PAAS masks
    return total + 2 * dims[-1] + dims[-1] * num_classes + num_classes


def count(model):
    return sum(p.numel() for p in model.parameters())


@functools.cache
def count_registered(name):
    return count(timm.create_model(name))


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_counts_equal_the_official_architecture(name):
    params = count_registered(name)
    print(f"{name}: {params:,} parameters")
    assert params == official_param_count(*OFFICIAL[name])


def test_parameter_counts_match_the_published_figures():
    # RVT-Ti: 8,646,376 in the RKDE authors' training log (facts file 3.1); RVT-S / RVT-B: 22.1M / 86.2M (RVT paper).
    counts = {name: count_registered(name) for name in ("rvt_tiny", "rvt_small", "rvt_base")}
    print(counts)
    assert counts == {"rvt_tiny": 8_646_376, "rvt_small": 22_148_392, "rvt_base": 86_223_784}


def test_paas_attention_matches_loop_reference():
    torch.manual_seed(0)
    dim, heads, tokens = 8, 2, 4
    head_dim = dim // heads
    attn = PAASAttention(dim, heads, num_tokens=tokens).double().eval()
    with torch.no_grad():
        attn.att_mask.normal_(0, 2)  # far from 0 so that the sigmoid matters
    x = torch.randn(2, tokens, dim, dtype=torch.float64)
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).tolist()  # [B, N, 3C]
    mask = attn.att_mask.tolist()
    expected = torch.zeros(2, tokens, dim, dtype=torch.float64)
    for b in range(2):
        heads_out = []
        for h in range(heads):
            q = [[qkv[b][n][h * head_dim + d] for d in range(head_dim)] for n in range(tokens)]
            k = [[qkv[b][n][dim + h * head_dim + d] for d in range(head_dim)] for n in range(tokens)]
            v = [[qkv[b][n][2 * dim + h * head_dim + d] for d in range(head_dim)] for n in range(tokens)]
            rows = []
            for i in range(tokens):
                logits = [
                    sum(a * c for a, c in zip(q[i], k[j], strict=True)) / math.sqrt(head_dim)
                    / (1 + math.exp(-mask[h][i][j]))
                    for j in range(tokens)
                ]
                weights = [math.exp(z - max(logits)) for z in logits]
                rows.append([sum(w * v[j][d] for j, w in enumerate(weights)) / sum(weights) for d in range(head_dim)])
            heads_out.append(rows)
        for n in range(tokens):
            row = [heads_out[h][n][d] for h in range(heads) for d in range(head_dim)]
            expected[b, n] = torch.tensor(row, dtype=torch.float64)
    expected = expected @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-12)


def test_paas_mask_is_initialised_and_placed_as_officially():
    model = timm.create_model("rvt_tiny_plus")
    masks = [b.attn.att_mask for stage in model.transformers for b in stage.blocks]
    assert [m is not None for m in masks] == [True] * 10 + [False] * 2
    first = masks[0]
    assert first.shape == (6, 196, 196) and torch.isfinite(first).all() and first.abs().max() < 0.15
    assert 0.015 < first.std() < 0.025  # trunc-normal(0.02), not uninitialised memory


def test_official_parameter_names_and_structure():
    names = set(timm.create_model("rvt_tiny_plus").state_dict())
    for key in (
        "patch_embed.proj.0.weight", "patch_embed.proj.1.running_mean", "patch_embed.proj.3.weight",
        "transformers.0.blocks.0.attn.att_mask", "transformers.0.blocks.0.attn.qkv.bias",
        "transformers.0.blocks.0.mlp.dwconv.weight", "transformers.0.blocks.9.mlp.bn3.weight",
        "transformers.1.blocks.1.attn.proj.weight", "pools.0.conv.weight", "norm.weight", "head.weight",
    ):
        assert key in names, key
    assert not any("pos_embed" in n or "cls_token" in n for n in names)
    base = timm.create_model("rvt_base")
    assert isinstance(base.transformers[0].blocks[0].mlp.fc1, torch.nn.Linear)  # width 768: linear MLP


def test_forward_shapes_and_pooling_stage():
    model = timm.create_model("rvt_tiny", img_size=112).eval()
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, 3, 112, 112))  # batch 1 works (official .squeeze() did not)
        assert features.shape == (1, 384, 4, 4)  # 7x7 tokens pooled to 4x4 at width 384
        assert model.forward_head(features).shape == (1, 1000)


def test_drop_path_follows_the_official_rule():
    model = timm.create_model("rvt_tiny", drop_path_rate=0.12)
    probs = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.transformers for b in stage.blocks]
    assert probs == pytest.approx([0.12 * i / 12 for i in range(12)])


def test_pretrained_cfgs_carry_normalisation():
    assert timm.create_model("rvt_small").pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    micro = timm.create_model("rvt_micro_32", img_size=16, num_classes=7)
    assert micro.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and micro.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert micro.pretrained_cfg["input_size"] == (3, 16, 16) and micro.pretrained_cfg["num_classes"] == 7


@pytest.mark.parametrize("side", [8, 32])
def test_micro_is_small_and_trains_on_small_images(side):
    torch.manual_seed(0)
    model = timm.create_model("rvt_micro_32", num_classes=10, img_size=side)
    assert count(model) < 3_000_000
    images, labels = torch.rand(4, 3, side, side), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.proj[0].weight.grad.abs().sum() > 0


def test_patch_size_sets_the_stem_stride():
    model = timm.create_model("rvt_micro_32", img_size=8, patch_size=2).eval()
    with torch.no_grad():
        assert model.forward_features(torch.rand(1, 3, 8, 8)).shape == (1, 128, 4, 4)  # 8 px / stride 2


def test_plus_mask_rejects_a_different_token_count():
    model = timm.create_model("rvt_small_plus", img_size=64).eval()
    assert model.transformers[0].blocks[0].attn.att_mask.shape == (6, 16, 16)
    with pytest.raises(EllbenchError, match="PAAS mask"):
        model(torch.rand(1, 3, 96, 96))
