"""Representation collapse against hand-worked values and an explicit loop over token pairs."""

import math

import pytest
import timm
import torch
from torch import nn

from ellbench.errors import EllbenchError
from ellbench.runner import Batch
from ellbench.tasks.collapse import (
    attention_layer_names,
    collapse_evaluator,
    collapse_per_example,
    collapse_per_layer,
    run_collapse,
    summarize_collapse,
    token_cosine_similarity,
)

# Three 2-d tokens: e1, e2 and e1 + e2. Pairs (2,1), (3,1), (3,2) have cosines 0, 1/sqrt2, 1/sqrt2.
THREE_TOKENS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
THREE_TOKENS_COLLAPSE = (0 + 2 / math.sqrt(2)) / 3


class ShiftBlock(nn.Module):
    """A block whose 'attention' passes tokens through, then adds a fixed shift for the next block."""

    def __init__(self, shift: list[float]):
        super().__init__()
        self.attn = nn.Identity()
        self.register_buffer("shift", torch.tensor(shift))

    def forward(self, x):
        return self.attn(x) + self.shift


class ToyModel(nn.Module):
    """Two blocks over [B, 3, 2] token inputs; logits are the mean token (2 classes)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(ShiftBlock([0.0, 1.0]), ShiftBlock([0.0, 0.0]))

    def forward(self, x):
        return self.blocks(x).mean(dim=1)


def loop_collapse(tokens: torch.Tensor) -> float:
    """Explicit definition for one example [N, C]: mean cosine over pairs i > j."""
    sims = []
    for i in range(tokens.shape[0]):
        for j in range(i):
            a, b = tokens[i].double(), tokens[j].double()
            sims.append(float(a @ b / (a.norm() * b.norm())))
    return sum(sims) / len(sims)


def scrambled_vit(**kwargs) -> nn.Module:
    """A tiny timm ViT with large random weights, so that layers are far from collapsed and differ from each other."""
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, **kwargs)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def test_three_tokens_hand_computed():
    value = token_cosine_similarity(THREE_TOKENS[None])
    assert value.shape == (1,)
    assert value.item() == pytest.approx(THREE_TOKENS_COLLAPSE, abs=1e-6)


def test_identical_and_opposite_tokens_give_the_extremes():
    same = torch.ones(1, 4, 3)
    opposite = torch.tensor([[[1.0, 2.0], [-1.0, -2.0]]])
    assert token_cosine_similarity(same).item() == pytest.approx(1.0, abs=1e-6)
    assert token_cosine_similarity(opposite).item() == pytest.approx(-1.0, abs=1e-6)


def test_toy_model_per_layer_hand_computed():
    # Layer 0 sees the three tokens; layer 1 sees them shifted by (0, 1): (1,1), (0,2), (1,2).
    layer1 = (1 / math.sqrt(2) + 3 / math.sqrt(10) + 2 / math.sqrt(5)) / 3
    model = ToyModel()
    assert attention_layer_names(model) == ["blocks.0.attn", "blocks.1.attn"]
    values = collapse_per_layer(model, THREE_TOKENS[None])
    assert values == pytest.approx([THREE_TOKENS_COLLAPSE, layer1], abs=1e-6)


def test_batch_average_over_examples():
    batch = torch.stack([THREE_TOKENS, torch.ones(3, 2)])  # second example fully collapsed in layer 0
    per_example = collapse_per_example(ToyModel(), batch)
    assert per_example.shape == (2, 2)
    assert collapse_per_layer(ToyModel(), batch)[0] == pytest.approx((THREE_TOKENS_COLLAPSE + 1.0) / 2, abs=1e-6)


def test_vit_matches_stepping_through_blocks_by_hand():
    model = scrambled_vit(img_size=32, patch_size=8, depth=3, num_classes=4)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = []
    with torch.no_grad():  # the block structure of timm's VisionTransformer, run by hand
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        for block in model.blocks:
            attn_out = block.attn(block.norm1(x))  # after proj, before the residual add
            expected.append(sum(loop_collapse(attn_out[b]) for b in range(len(images))) / len(images))
            x = block(x)
    values = collapse_per_layer(model, images)
    assert len(values) == 3
    assert values == pytest.approx(expected, abs=1e-6)
    assert min(values) < 0.95  # the check above would be weak if every layer sat at 1
    assert not any(block.attn._forward_hooks for block in model.blocks)


def test_attention_inside_stages_is_found_in_block_order():
    # PiT nests blocks in stages with pooling between them, as RVT does.
    model = timm.create_model("pit_ti_224", pretrained=False, num_classes=3)
    names = attention_layer_names(model)
    assert names == [f"transformers.{s}.blocks.{b}.attn" for s, depth in enumerate([2, 6, 4]) for b in range(depth)]


def test_evaluator_rows_resume_to_the_same_summary():
    model = scrambled_vit(img_size=32, patch_size=8, depth=2, num_classes=4)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 0])
    evaluate = collapse_evaluator(model)
    rows = evaluate(Batch(0, torch.arange(3), images[:3], labels[:3])) \
        + evaluate(Batch(1, torch.arange(3, 5), images[3:], labels[3:]))

    with torch.no_grad():
        preds = model(images).argmax(dim=-1).tolist()
    assert [row["idx"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row["pred"] for row in rows] == preds
    assert [row["correct"] for row in rows] == [p == label for p, label in zip(preds, labels.tolist(), strict=True)]
    assert all(len(row["collapse"]) == 2 for row in rows)
    assert summarize_collapse(rows) == pytest.approx(collapse_per_layer(model, images), abs=1e-6)


def test_model_mode_is_restored():
    model = ToyModel().train()
    collapse_per_layer(model, THREE_TOKENS[None])
    assert model.training


def test_model_without_attention_is_refused():
    with pytest.raises(EllbenchError, match="no attention layers"):
        collapse_per_layer(nn.Linear(2, 2), torch.zeros(1, 2))


def test_single_token_is_refused():
    with pytest.raises(EllbenchError, match="at least 2 tokens"):
        token_cosine_similarity(torch.ones(1, 1, 4))


def test_run_collapse_stores_a_resumable_job_whose_summary_is_the_batch_measure(tmp_path):
    from ellbench.data import open_dataset
    from ellbench.models.loading import LoadedModel
    from ellbench.store import Store

    dataset = open_dataset("digits", "test", limit=5)
    model = scrambled_vit(img_size=8, patch_size=4, depth=2, num_classes=10)
    loaded = LoadedModel(name="deit_tiny_patch16_224", module=model, checkpoint_id="random-init:seed=0", device="cpu")
    store = Store(tmp_path / "results.sqlite")

    job = run_collapse(store, loaded, dataset, batch_size=2, progress=False)  # batches of 2, 2 and 1
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    summary = job["summary"]
    assert summary["n"] == 5
    assert summary["collapse"] == pytest.approx(collapse_per_layer(model, images), abs=1e-6)
    outcomes = store.outcomes(job["id"])
    assert list(outcomes["idx"]) == [0, 1, 2, 3, 4]
    assert all(len(values) == 2 for values in outcomes["collapse"])

    again = run_collapse(store, loaded, dataset, batch_size=2, progress=False)
    assert again["id"] == job["id"] and len(store.jobs(task="collapse")) == 1
