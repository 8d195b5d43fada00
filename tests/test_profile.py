"""Tests of ellbench.profile against analytic counts, a hand parameter count and known sleep times."""

import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn
from torch.nn import functional as F

from ellbench import profile
from ellbench.errors import EllbenchError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIB = 2**20


def deit_macs(img_size: int, patch: int = 16, dim: int = 192, depth: int = 12, classes: int = 1000) -> int:
    """Multiply-accumulates of a DeiT forward pass on one image, written out layer by layer."""
    patches = (img_size // patch) ** 2
    tokens = patches + 1  # + CLS
    patch_embed = patches * dim * 3 * patch * patch
    linears = tokens * (dim * 3 * dim + dim * dim + dim * 4 * dim + 4 * dim * dim)  # qkv, proj, fc1, fc2
    attention = 2 * tokens * tokens * dim  # QK^T and AV summed over heads
    return patch_embed + depth * (linears + attention) + dim * classes


def deit_tiny_params() -> int:
    """Parameters of DeiT-Tiny counted by hand from its layer shapes."""
    dim, hidden = 192, 768
    patch_embed = 3 * 16 * 16 * dim + dim
    tokens = dim + 197 * dim  # CLS + position embedding
    norms = 2 * (2 * dim)
    block = norms + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
    return patch_embed + tokens + 12 * block + 2 * dim + dim * 1000 + 1000


def test_linear_toy_flops_equal_two_times_macs():
    layer = nn.Linear(7, 5)
    flops, by_op = profile.count_flops(layer, torch.rand(3, 7))
    assert flops == 2 * 3 * 7 * 5
    assert by_op == {"addmm": 2 * 3 * 7 * 5}


@pytest.mark.parametrize("fused", [True, False])
def test_attention_toy_flops_equal_formula_fused_or_explicit(fused):
    batch, tokens, dim, heads = 2, 10, 32, 4
    attention = Attention(dim, num_heads=heads).eval()
    attention.fused_attn = fused
    flops, by_op = profile.count_flops(attention, torch.rand(batch, tokens, dim))
    projections = 2 * batch * tokens * dim * (3 * dim + dim)
    scores_and_mixing = 2 * 2 * batch * tokens * tokens * dim
    assert flops == projections + scores_and_mixing
    assert by_op.get("mm", 0) + by_op.get("addmm", 0) == projections  # qkv has no bias (mm), proj has (addmm)


class DistanceAttention(nn.Module):
    """Kernel attention softmax(-|q - k|^2) v on a [B, H, N, D] input used as q, k and v."""

    def forward(self, x):
        return (-torch.cdist(x, x).square()).softmax(dim=-1) @ x


class FusedAttention(nn.Module):
    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)


def test_distance_attention_counts_like_fused_dot_product_attention():
    x = torch.rand(2, 3, 10, 8)  # [B, H, N, D]
    two_matmuls = 2 * 2 * 2 * 3 * 10 * 10 * 8
    distance_flops, _ = profile.count_flops(DistanceAttention(), x)
    fused_flops, fused_ops = profile.count_flops(FusedAttention(), x)
    assert distance_flops == fused_flops == two_matmuls
    assert list(fused_ops) == ["_scaled_dot_product_flash_attention_for_cpu"]  # the kernel torch counts as 0


def test_deit_tiny_flops_match_analytic_count_with_and_without_fused_attention():
    model = timm.create_model("deit_tiny_patch16_224").eval()
    image = torch.rand(1, 3, 224, 224)
    expected = 2 * deit_macs(224)
    assert profile.set_fused_attention(model, True) == 12
    fused_flops, fused_ops = profile.count_flops(model, image)
    profile.set_fused_attention(model, False)
    explicit_flops, explicit_ops = profile.count_flops(model, image)
    assert abs(fused_flops - expected) <= 0.02 * expected
    assert fused_flops == explicit_flops
    assert "bmm" in explicit_ops and "bmm" not in fused_ops  # the two runs really took different attention paths
    assert round(expected / 2e9, 2) == 1.25  # timm's benchmark CSVs list 1.26 GMACs (fvcore adds norms etc.)


def test_parameters_equal_hand_count_and_sum_of_numel():
    model = timm.create_model("deit_tiny_patch16_224")
    assert profile.count_parameters(model) == deit_tiny_params() == 5_717_416
    state = model.state_dict()
    assert profile.count_parameters(model) == sum(tensor.numel() for tensor in state.values())


class VirtualClock:
    """A perf_counter stand-in: time moves only when a Sleeper says so, so timings are exact whatever the load."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeper(nn.Module):
    """A 'model' whose forward takes the next duration of a fixed cycle on the virtual clock."""

    def __init__(self, durations_s, clock: VirtualClock):
        super().__init__()
        self.durations_s = list(durations_s)
        self.clock = clock
        self.calls = 0

    def forward(self, x):
        self.clock.now += self.durations_s[self.calls % len(self.durations_s)]
        self.calls += 1
        return x


@pytest.fixture
def clock(monkeypatch):
    virtual = VirtualClock()
    monkeypatch.setattr(profile.time, "perf_counter", virtual)
    return virtual


def test_throughput_matches_known_step_time(clock):
    images = torch.rand(4, 3, 8, 8)
    result = profile.measure_throughput(Sleeper([0.02, 0.02, 0.02, 0.04], clock), images, warmup=1, steps=3,
                                        repeats=2)
    # warm-up takes call 0; repeat 1 times calls 1-3 (0.02, 0.02, 0.04 s), repeat 2 calls 4-6 (0.02 s each)
    assert result["throughput_runs_img_s"] == pytest.approx([12 / 0.08, 12 / 0.06])
    assert result["throughput_img_s"] == pytest.approx((12 / 0.08 + 12 / 0.06) / 2)
    assert (result["throughput_min_img_s"], result["throughput_max_img_s"]) == pytest.approx((150.0, 200.0))
    assert result["step_time_ms"] == pytest.approx(1000 * 4 / result["throughput_img_s"])


def test_latency_median_and_p90_match_numpy_on_known_durations(clock):
    durations_ms = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    model = Sleeper([d / 1000 for d in durations_ms], clock)
    result = profile.measure_latency(model, torch.rand(1, 3, 8, 8), warmup=0, steps=10)
    assert result["latency_steps"] == 10
    assert result["latency_ms_median"] == pytest.approx(np.median(durations_ms))
    assert result["latency_ms_p90"] == pytest.approx(np.percentile(durations_ms, 90))


@pytest.mark.parametrize("hidden_activation", [False, True])
def test_cpu_memory_equals_hand_count_of_live_tensors(hidden_activation):
    batch, width_in, hidden, width_out = 7, 100, 300, 50
    layers = [nn.Linear(width_in, hidden), nn.Linear(hidden, width_out)]
    if hidden_activation:
        layers.insert(1, nn.ReLU())
    model = nn.Sequential(*layers).eval()
    images = torch.rand(batch, width_in)
    result = profile.measure_cpu_memory(model, images, "off")
    weights = 4 * (width_in * hidden + hidden + hidden * width_out + width_out)
    # At the peak: the hidden layer and the output (Linear, Linear), or the hidden layer before and after the ReLU,
    # which nn.Sequential frees only once the ReLU has returned (Linear, ReLU, Linear).
    activations = 4 * batch * (2 * hidden if hidden_activation else hidden + width_out)
    assert result["model_memory_mib"] * MIB == weights
    assert result["input_memory_mib"] * MIB == 4 * batch * width_in
    assert result["activation_memory_mib"] * MIB == activations
    assert result["peak_memory_mib"] * MIB == weights + 4 * batch * width_in + activations


class _Bf16Linear(nn.Module):
    """The same product as a Linear under bfloat16 autocast, on weights, bias and input already in bfloat16."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = nn.Parameter(layer.bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_cpu_memory_counts_autocast_copies_by_hand():
    batch, width_in, width_out = 7, 96, 320
    layer = nn.Linear(width_in, width_out).eval()
    images = torch.rand(batch, width_in).to(torch.bfloat16).float()
    result = profile.measure_cpu_memory(layer, images, "bf16")
    # The same product on tensors already in bfloat16 holds the bfloat16 output and whatever scratch the matmul
    # kernel takes from torch's allocator (oneDNN's bfloat16 GEMM takes some, by thread count and CPU: 15 KiB at one
    # thread, 29 KiB at two on an AVX512-BF16 EPYC), and no copies.
    plain = profile.measure_cpu_memory(_Bf16Linear(layer).eval(), images.to(torch.bfloat16), "off")
    output = 2 * batch * width_out
    assert plain["activation_memory_mib"] * MIB >= output
    # Autocast adds exactly its bfloat16 copies of the input, weight and bias, all alive during the matmul.
    copies = 2 * (batch * width_in + width_in * width_out + width_out)
    assert result["activation_memory_mib"] * MIB == copies + plain["activation_memory_mib"] * MIB


def test_cpu_memory_of_deit_repeats_exactly_and_holds_the_mlp_activations():
    model = timm.create_model("deit_tiny_patch16_224").eval()
    images = torch.rand(2, 3, 224, 224)
    first = profile.measure_cpu_memory(model, images, "off")
    second = profile.measure_cpu_memory(model, images, "off")
    assert first == second
    assert first["model_memory_mib"] * MIB == 5_717_416 * 4
    # fc1's output and GELU's output [B, 197, 768] are alive together in every block's MLP.
    assert first["activation_memory_mib"] * MIB >= 2 * 2 * 197 * 768 * 4


def test_measuring_cpu_memory_leaves_stderr_clean():
    # torch's profiler (kineto) would print USDT lines and, without a GPU, an "ERROR:" line at every start.
    script = ("import torch; from ellbench import profile; "
              "profile.measure_cpu_memory(torch.nn.Linear(4, 4), torch.ones(2, 4), 'off'); print('measured')")
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "measured", done.stderr
    assert "ERROR" not in done.stderr and "USDT" not in done.stderr, done.stderr


def test_cpu_peak_rss_grows_with_batch_size_in_fresh_children():
    settings = dict(name="deit_tiny_patch16_224", img_size=None, num_classes=None, amp="off", compile=False, threads=1,
                    fused_attn=None, seed=0, checkpoint=None)  # fmt: skip
    one = profile.measure_cpu_rss({**settings, "batch_size": 1})
    sixteen = profile.measure_cpu_rss({**settings, "batch_size": 16})
    weights_mib = 5_717_416 * 4 / MIB
    # Batch 16 holds 15 more input images and 15 more MLP hidden activations [197, 768] at its peak, at the least.
    extra_mib = 15 * (3 * 224 * 224 + 197 * 768) * 4 / MIB
    assert one["model_rss_mib"] >= weights_mib
    assert one["peak_rss_mib"] >= weights_mib
    assert sixteen["peak_rss_mib"] - one["peak_rss_mib"] >= extra_mib


def test_profile_model_records_settings_and_counts():
    threads_before = torch.get_num_threads()
    result = profile.profile_model(
        "deit_tiny_patch16_224", batch_size=2, img_size=32, num_classes=10, threads=1, repeats=2, warmup=1, steps=2,
        latency_steps=3, fused_attn=False,
    )  # fmt: skip
    assert torch.get_num_threads() == threads_before
    assert (result["threads"], result["img_size"], result["batch_size"], result["num_classes"]) == (1, 32, 2, 10)
    assert result["fused_attention"] == "off"
    assert result["flops_per_image"] == 2 * deit_macs(32, classes=10)
    # 4 patches + CLS in the position embedding, 10 classes in the head
    assert result["params"] == deit_tiny_params() - (197 - 5) * 192 - (1000 - 10) * (192 + 1)
    # two timed repeats of two steps: the figure is their median, and the step time is its inverse
    runs = result["throughput_runs_img_s"]
    assert len(runs) == 2 and result["throughput_img_s"] == pytest.approx(sum(runs) / 2)
    assert result["step_time_ms"] == pytest.approx(1000 * 2 / result["throughput_img_s"])
    assert result["latency_steps"] == 3 and result["latency_ms_p90"] >= result["latency_ms_median"] > 0
    assert result["model_memory_mib"] * MIB == result["params"] * 4  # no buffers in a DeiT
    input_bytes = 2 * 3 * 32 * 32 * 4
    assert result["peak_memory_mib"] * MIB == result["params"] * 4 + input_bytes + result["activation_memory_mib"] * MIB
    assert result["peak_rss_mib"] > result["params"] * 4 / MIB  # from the child process: weights are resident
    assert result["device"] == "cpu" and "attention" in result["flops_counting"]


def test_cuda_without_gpu_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EllbenchError) as error:
        profile.profile_model("deit_tiny_patch16_224", device="cuda", measure_memory=False)
    assert "no CUDA GPU" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="no_such_model"), "unknown model"),
        (dict(name="deit_tiny_patch16_224", amp="fp8"), "unknown --amp"),
        (dict(name="deit_tiny_patch16_224", batch_size=0), "batch size"),
        (dict(name="deit_tiny_patch16_224", device="tpu"), "device"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(EllbenchError, match=message):
        profile.profile_model(**kwargs, measure_memory=False)


@pytest.mark.cuda
def test_cuda_profile_times_synchronised_and_measures_max_memory_allocated():
    """On a GPU: bf16 autocast, synchronised timing and max_memory_allocated: activations of a batch of 32 at 224 px
    and the float32 weights (22 MB for DeiT-Tiny) must both show."""
    result = profile.profile_model("deit_tiny_patch16_224", device="cuda", amp="bf16", batch_size=32, warmup=2,
                                   steps=5, repeats=2, latency_steps=5)
    assert result["device"].startswith("cuda") and result["amp"] == "bf16"
    assert result["throughput_img_s"] > 0 and result["latency_ms_median"] > 0
    assert result["peak_memory_mib"] > result["params"] * 4 / MIB  # weights are counted
    assert "max_memory_allocated" in result["memory_method"]
