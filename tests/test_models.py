"""Model sizes, the [0, 1] wrapper, safe checkpoint loading and the model list."""

import hashlib
import json
import pathlib
import pickle
from functools import partial

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import Attention

from ellbench.errors import EllbenchError
from ellbench.models.factory import build_model, list_models
from ellbench.models.loading import load_model, read_checkpoint
from ellbench.models.vit import create_vit


def test_create_vit_reproduces_timm_deit_and_micro_is_small():
    with torch.device("meta"):
        ours = create_vit("deit_small_patch16_224")
        stock = timm.create_model("deit_small_patch16_224")
        micro = timm.create_model("deit_micro_patch4_32")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    assert ours.blocks[0].norm1.eps == stock.blocks[0].norm1.eps == 1e-6
    assert sum(p.numel() for p in micro.parameters()) < 3_000_000
    assert (micro.patch_embed.patch_size, micro.embed_dim, len(micro.blocks), micro.blocks[0].attn.num_heads) == (
        (4, 4), 128, 6, 4
    )


def test_create_vit_overrides_reach_model_and_cfg():
    model = timm.create_model("deit_micro_patch4_32", img_size=28, patch_size=7, num_classes=5)
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 5)
    assert model.pretrained_cfg["input_size"] == (3, 28, 28) and model.pretrained_cfg["num_classes"] == 5
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_create_vit_accepts_a_partial_attention_layer():
    model = create_vit("deit_micro_patch4_32", attn_layer=partial(Attention, gated=True))
    assert all(block.attn.gate is not None for block in model.blocks)
    assert isinstance(model.blocks[0].attn, Attention)


def test_normalized_model_applies_cfg_statistics():
    wrapped = build_model("deit_micro_patch4_32", seed=1)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = wrapped.model((images - 0.5) / 0.5)
        torch.testing.assert_close(wrapped(images), expected)
    assert not wrapped.training
    assert set(wrapped.state_dict()) == {f"model.{key}" for key in wrapped.model.state_dict()}

    imagenet = build_model("deit_tiny_patch16_224", num_classes=3)
    assert imagenet.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert imagenet.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_seed_decides_initialisation_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = build_model("deit_micro_patch4_32", seed=7).model.head.weight
    again = build_model("deit_micro_patch4_32", seed=7).model.head.weight
    other = build_model("deit_micro_patch4_32", seed=8).model.head.weight
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_unknown_model_and_bad_kwargs_give_one_line():
    with pytest.raises(EllbenchError, match="elliptical_tiny_patch16_224") as caught:
        build_model("eliptical_tiny_patch16_224")
    assert "\n" not in str(caught.value)
    with pytest.raises(EllbenchError, match="cannot build"):
        build_model("deit_micro_patch4_32", estimator="median")


def save_micro(tmp_path, name="micro.safetensors", **kwargs):
    model = timm.create_model("elliptical_micro_patch4_32", **kwargs)
    path = tmp_path / name
    save_file(model.state_dict(), str(path))
    return model, path


def test_safetensors_checkpoint_with_sidecar_round_trips(tmp_path):
    model, path = save_micro(tmp_path, img_size=16, patch_size=2, num_classes=4)
    path.with_suffix(".json").write_text(json.dumps(
        {"model": "elliptical_micro_patch4_32", "model_kwargs": {"img_size": 16, "patch_size": 2, "num_classes": 4}}
    ))
    loaded = load_model("elliptical_micro_patch4_32", path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.input_size == (3, 16, 16)
    assert loaded(torch.rand(1, 3, 16, 16)).shape == (1, 4)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "epoch": 3},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {f"model.{k}": v for k, v in sd.items()},
])
def test_torch_checkpoints_lose_their_wrappers(tmp_path, wrap):
    stock = timm.create_model("deit_micro_patch4_32", num_classes=6)
    path = tmp_path / "weights.pth"
    torch.save(wrap(stock.state_dict()), path)
    read = read_checkpoint(path)
    assert set(read.state) == set(stock.state_dict()) and read.meta == {}
    # A DeiT checkpoint loads into the Elliptical twin; the classifier width comes from the weights.
    loaded = load_model("elliptical_micro_patch4_32", path)
    assert torch.equal(loaded.model.head.weight, stock.head.weight)


def test_mismatched_checkpoint_names_first_offenders(tmp_path):
    _, path = save_micro(tmp_path, num_classes=10)
    with pytest.raises(EllbenchError) as caught:
        load_model("deit_tiny_patch16_224", path)
    message = str(caught.value)
    assert "\n" not in message and "wrong shape" in message and "cls_token" in message
    assert "missing 72" in message  # blocks 6..11 have 12 tensors each
    assert "cls_token (1, 1, 128) in file, (1, 1, 192) in model" in message


def test_missing_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(EllbenchError, match="not found"):
        read_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(EllbenchError, match="safetensors"):
        read_checkpoint(garbage)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(EllbenchError, match="unknown type"):
        read_checkpoint(other)


class _TouchOnUnpickle:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(probe)))
    assert probe.exists()  # the trap does fire when a trusting unpickler reads it

    payload = {"head.weight": torch.zeros(2, 2), "trap": _TouchOnUnpickle(target)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(EllbenchError, match="refusing") as caught:
        load_model("deit_micro_patch4_32", path)
    assert "\n" not in str(caught.value)
    assert not target.exists()


def test_checkpoint_sha256_is_the_file_digest(tmp_path):
    _, path = save_micro(tmp_path)
    assert read_checkpoint(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(EllbenchError):
        read_checkpoint(tmp_path / "absent.safetensors")


def test_list_models_names_families_sizes():
    rows = {row["name"]: row for row in list_models()}
    for size in ("tiny", "small", "base"):
        assert rows[f"deit_{size}_patch16_224"]["params"] == rows[f"elliptical_{size}_patch16_224"]["params"]
    assert rows["deit_tiny_patch16_224"]["params"] == 5_717_416  # timm's DeiT-Ti, 5.72M
    assert rows["elliptical_tiny6h_patch16_224"]["input_size"] == [3, 224, 224]
    # micro by hand: patch 3*16*128+128, cls 128, pos 65*128, 6 blocks of 198,272 (LNs 512, qkv 49,536, proj 16,512,
    # fc1 66,048, fc2 65,664), final LN 256, head 128*10+10.
    assert rows["elliptical_micro_patch4_32"] == {
        "name": "elliptical_micro_patch4_32", "family": "elliptical", "params": 1_205_898, "input_size": [3, 32, 32]
    }
    assert all(row["family"] == name.split("_")[0] for name, row in rows.items())
    assert "vit_base_patch16_224" not in rows
