"""Elliptical Attention against independent references: hand-worked numbers, explicit loops, timm's DeiT."""

import math

import pytest
import timm
import torch

import ellbench.models  # noqa: F401  (registers the models with timm)
from ellbench import profile
from ellbench.errors import EllbenchError
from ellbench.models import elliptical
from ellbench.models.elliptical import EllipticalAttention, coordinate_relevance

# Hand-worked case: one sample, one head, N = 3 tokens, D_h = 2.
PREV_VALUES = [[0.0, 0.0], [1.0, 2.0], [2.0, 0.0]]
VALUES = [[1.0, 1.0], [1.0, 0.0], [0.0, 2.0]]
# |v - v_prev| per token: [1, 1], [0, 2], [2, 2]; mean over tokens: [1, 5/3]; / delta 5: [0.2, 1/3]; / max: [0.6, 1].
HAND_RELEVANCE = [0.6, 1.0]
# With q = k = v = VALUES and M = diag(0.6, 1): scores q_i M k_j / sqrt(2), e.g. row 2 = [0.6, 0.6, 0] / sqrt(2),
# exp -> [1.528465, 1.528465, 1], weights [0.376754, 0.376754, 0.246492], output = weights @ VALUES.
HAND_OUTPUT = [[0.529464, 1.295687], [0.753508, 0.869738], [0.232082, 1.722530]]


def as_heads(rows):
    return torch.tensor(rows, dtype=torch.float64)[None, None]  # [B=1, H=1, N, D_h]


def identity_attention(fused: bool) -> EllipticalAttention:
    """Width 2, one head, q = k = v = x and an identity output projection."""
    attn = EllipticalAttention(2, num_heads=1, qkv_bias=True, fused_attn=fused).double()
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.eye(2).repeat(3, 1))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(2))
        attn.proj.bias.zero_()
    return attn


@pytest.mark.parametrize("delta", [5.0, 1.0, 0.01])
def test_relevance_hand_worked_and_delta_cancels(delta):
    relevance = coordinate_relevance(as_heads(VALUES), as_heads(PREV_VALUES), delta=delta)
    assert relevance.shape == (1, 1, 2)
    assert relevance[0, 0].tolist() == pytest.approx(HAND_RELEVANCE, abs=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_output_hand_worked(fused):
    out, values = identity_attention(fused)(
        torch.tensor([VALUES], dtype=torch.float64), prev_values=as_heads(PREV_VALUES), return_values=True
    )
    assert values[0, 0].tolist() == VALUES
    assert out[0].tolist() == [pytest.approx(row, abs=1e-6) for row in HAND_OUTPUT]


def test_median_differs_from_mean_only_where_a_token_stands_out():
    prev = as_heads([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # Coordinate 0 changes by 2 on every token; coordinate 1 by 0, 0 and 3 (one outlying token).
    current = as_heads([[2.0, 0.0], [-2.0, 0.0], [2.0, 3.0]])
    mean = coordinate_relevance(current, prev, estimator="mean")[0, 0].tolist()
    median = coordinate_relevance(current, prev, estimator="median")[0, 0].tolist()
    assert mean == pytest.approx([1.0, 0.5])  # means [2, 1] / 2
    assert median == pytest.approx([1.0, 0.0])  # medians [2, 0] / 2


def test_zero_change_gives_plain_attention_not_nan():
    values = torch.randn(2, 3, 5, 4)
    relevance = coordinate_relevance(values, values.clone())
    assert torch.equal(relevance, torch.ones(2, 3, 4))
    # Only sample 1, head 2 unchanged: it alone gets the unit metric; the others keep theirs, largest entry 1.
    prev_values = values.clone()
    prev_values[0] += torch.arange(4.0)
    prev_values[1, :2] -= torch.arange(4.0)
    relevance = coordinate_relevance(values, prev_values)
    assert torch.equal(relevance[1, 2], torch.ones(4))
    expected = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    torch.testing.assert_close(relevance[0], expected.expand(3, 4))
    torch.testing.assert_close(relevance[1, :2], expected.expand(2, 4))


def test_unknown_estimator_is_refused():
    with pytest.raises(EllbenchError, match="estimator"):
        EllipticalAttention(8, num_heads=2, estimator="mode")


def loop_reference(attn: EllipticalAttention, x: torch.Tensor, prev_values: torch.Tensor) -> torch.Tensor:
    """softmax(Q M K^T / sqrt(D_h)) V written out per sample and head, with m from explicit sums."""
    batch, tokens, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * width, dtype=x.dtype)
    q, k, v = (x @ attn.qkv.weight.T + bias).split(width, dim=-1)
    outputs = torch.zeros(batch, tokens, width, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            m_hat = [sum(abs(v[b, n, cols][d] - prev_values[b, h, n, d]) for n in range(tokens)) / tokens
                     for d in range(head_dim)]
            metric = torch.diag(torch.stack(m_hat) / max(m_hat))
            scores = q[b, :, cols] @ metric @ k[b, :, cols].T / math.sqrt(head_dim)
            outputs[b, :, cols] = torch.softmax(scores, dim=-1) @ v[b, :, cols]
    return outputs @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_fused_and_reference_paths_equal_the_explicit_formula_in_float64(qkv_bias):
    torch.manual_seed(0)
    fused = EllipticalAttention(12, num_heads=3, qkv_bias=qkv_bias, fused_attn=True).double()
    reference = EllipticalAttention(12, num_heads=3, qkv_bias=qkv_bias, fused_attn=False).double()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    prev_values = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    out_fused = fused(x, prev_values=prev_values)
    out_reference = reference(x, prev_values=prev_values)
    torch.testing.assert_close(out_fused, out_reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_fused, loop_reference(fused, x, prev_values), rtol=0, atol=1e-12)


def test_fused_and_reference_agree_with_a_mask():
    torch.manual_seed(1)
    attn = EllipticalAttention(8, num_heads=2, fused_attn=True).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    prev_values = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True]]).expand(4, 4)
    out_fused = attn(x, attn_mask=mask, prev_values=prev_values)
    attn.fused_attn = False
    torch.testing.assert_close(out_fused, attn(x, attn_mask=mask, prev_values=prev_values), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_no_gradient_flows_into_the_metric(fused):
    torch.manual_seed(2)
    attn = EllipticalAttention(8, num_heads=2, qkv_bias=True, fused_attn=fused).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    prev_values = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    attn(x, prev_values=prev_values).square().sum().backward()
    assert prev_values.grad is None

    # Independent: the same forward with m computed beforehand and frozen as a constant.
    x_const = x.detach().clone().requires_grad_(True)
    q, k, v = (x_const @ attn.qkv.weight.T + attn.qkv.bias).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    frozen = coordinate_relevance(v.detach(), prev_values.detach()).clone()
    scores = (q * frozen[:, :, None, :]) @ k.transpose(-2, -1) / 2.0  # sqrt(D_h = 4)
    heads = torch.softmax(scores, dim=-1) @ v  # [B, H, N, D_h]
    out = attn.proj(heads.transpose(1, 2).reshape(2, 5, 8))
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, x_const.grad, rtol=0, atol=1e-10)


def test_stock_deit_tiny_loads_strictly_and_unit_metric_gives_deit_logits(monkeypatch):
    torch.manual_seed(3)
    deit = timm.create_model("deit_tiny_patch16_224").eval()
    model = timm.create_model("elliptical_tiny_patch16_224").eval()
    model.load_state_dict(deit.state_dict(), strict=True)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = deit(images)
        elliptical_logits = model(images)
        monkeypatch.setattr(
            elliptical, "coordinate_relevance", lambda values, prev_values, **_: torch.ones_like(values[..., 0, :])
        )
        unit_metric_logits = model(images)
    torch.testing.assert_close(unit_metric_logits, expected, rtol=1e-5, atol=1e-5)
    assert (elliptical_logits - expected).abs().max() > 1e-4  # the real metric does change the logits


def test_first_block_plain_and_block_choice_respected():
    torch.manual_seed(4)
    deit = timm.create_model("deit_micro_patch4_32").eval()
    plain = timm.create_model("elliptical_micro_patch4_32", elliptical_blocks=[]).eval()
    default = timm.create_model("elliptical_micro_patch4_32").eval()
    assert default.elliptical_blocks == (1, 2, 3, 4, 5)
    plain.load_state_dict(deit.state_dict(), strict=True)
    default.load_state_dict(deit.state_dict(), strict=True)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), deit(images), rtol=1e-5, atol=1e-5)
        # Block 0 is the same in every model: plain dot-product attention.
        tokens = default._embed(images)
        torch.testing.assert_close(default.blocks[0](tokens)[0], deit.blocks[0](tokens), rtol=1e-5, atol=1e-6)
    with pytest.raises(EllbenchError, match="block 0"):
        timm.create_model("elliptical_micro_patch4_32", elliptical_blocks=[0, 1])


def test_model_options_reach_every_attention_layer():
    with torch.device("meta"):
        model = timm.create_model("elliptical_micro_patch4_32", estimator="median", delta=1.0, fused_attn=False)
    assert {(b.attn.estimator, b.attn.delta, b.attn.fused_attn) for b in model.blocks} == {("median", 1.0, False)}
    with pytest.raises(EllbenchError, match="delta"):
        timm.create_model("elliptical_micro_patch4_32", delta=0)


def test_intermediates_checkpointing_and_classifier_reset_keep_timm_behaviour():
    torch.manual_seed(5)
    model = timm.create_model("elliptical_micro_patch4_32").eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(images)
        final, intermediates = model.forward_intermediates(images, indices=[1, 5], output_fmt="NLC", norm=True)
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(intermediates[1], features[:, 1:])
    assert intermediates[0].shape == (2, 64, 128)

    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), features)
    model.reset_classifier(3)
    assert model(images).shape == (2, 3)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_registered_sizes_match_timm_deit(size):
    with torch.device("meta"):
        deit = timm.create_model(f"deit_{size}_patch16_224")
        model = timm.create_model(f"elliptical_{size}_patch16_224")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in deit.state_dict().items()}
    assert model.pretrained_cfg["mean"] == deit.pretrained_cfg["mean"]


def test_heads_ablation_and_micro_sizes():
    with torch.device("meta"):
        six_heads = timm.create_model("elliptical_tiny6h_patch16_224")
        micro = timm.create_model("elliptical_micro_patch4_32")
    assert six_heads.blocks[0].attn.num_heads == 6 and six_heads.blocks[0].attn.head_dim == 32
    assert sum(p.numel() for p in micro.parameters()) < 3_000_000
    assert micro.pretrained_cfg["input_size"] == (3, 32, 32)


def test_live_memory_exceeds_deit_by_at_most_one_block_of_carried_values():
    torch.manual_seed(6)
    deit = timm.create_model("deit_micro_patch4_32").eval()
    model = timm.create_model("elliptical_micro_patch4_32").eval()
    images = torch.rand(4, 3, 32, 32)
    deit_bytes = profile.measure_cpu_memory(deit, images, "off")["activation_memory_mib"] * 2**20
    model_bytes = profile.measure_cpu_memory(model, images, "off")["activation_memory_mib"] * 2**20
    qkv_bytes = 4 * 65 * 3 * 128 * 4  # one block's qkv output [B, N, 3C] = [4, 65, 384] in float32
    # v, carried to the next block, is a view of its block's qkv output; the block before's must be gone by the MLP.
    assert model_bytes <= deit_bytes + qkv_bytes


def copied_elements(model, images) -> int:
    """Elements that aten::copy_ writes in one forward pass, from torch's profiler."""
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        model(images)
    copies = [event for event in prof.key_averages(group_by_input_shape=True) if event.key == "aten::copy_"]
    return sum(math.prod(event.input_shapes[0]) * event.count for event in copies)


def test_forward_copies_no_more_than_deit():
    deit = timm.create_model("deit_micro_patch4_32").eval()
    model = timm.create_model("elliptical_micro_patch4_32").eval()
    images = torch.rand(2, 3, 32, 32)
    # DeiT copies each linear layer's bias into its output; the metric may add a scalar per block (mean's 1 / N),
    # never a tensor.
    assert copied_elements(model, images) <= copied_elements(deit, images) + len(model.elliptical_blocks)

