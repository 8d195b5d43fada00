"""AMP: every attention family under bf16 autocast on the CPU, float32 at the edges, attacks, job keys and reports."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ellbench import runner
from ellbench.attacks import protocol
from ellbench.attacks.suite import make_entries
from ellbench.data import open_dataset
from ellbench.errors import EllbenchError
from ellbench.models.amp import autocast_logits, check_amp
from ellbench.models.factory import build_model
from ellbench.models.kde import MoMAttention
from ellbench.models.loading import LoadedModel, load_for_eval
from ellbench.report.results import long_results
from ellbench.runner import Batch
from ellbench.store import Store
from ellbench.tasks.attack import attack_evaluator, run_attack_suite
from ellbench.tasks.eval import run_clean

FAMILIES = ("deit_micro_patch4_32", "elliptical_micro_patch4_32", "kde_micro_patch4_32", "rkde_micro_patch4_32",
            "mom_micro_patch4_32", "rvt_micro_32")


def images(n=16, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_amp_modes_are_checked():
    assert [check_amp(mode) for mode in ("off", "bf16", "fp16")] == ["off", "bf16", "fp16"]
    with pytest.raises(EllbenchError, match="unknown --amp 'fp8'; choose one of off, bf16, fp16"):
        check_amp("fp8")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_under_bf16_autocast_is_close_to_float32(name, one_thread):
    model = build_model(name, num_classes=10, seed=0)
    x = images()
    with torch.no_grad():
        reference = model(x)
        model.amp = "bf16"
        mixed = model(x)
    assert mixed.dtype == torch.float32  # logits leave autocast in float32
    assert not torch.equal(mixed, reference)  # it did run in reduced precision
    # bf16 keeps 8 significant bits (relative rounding 2^-9 per op): a few percent of the logits' scale over 6 blocks
    scale = reference.abs().max()
    assert (mixed - reference).abs().max() <= 0.05 * scale
    assert torch.equal(mixed.argmax(1), reference.argmax(1))


def test_input_gradients_stay_float32_under_autocast(one_thread):
    model = build_model("elliptical_micro_patch4_32", num_classes=10, seed=0)
    model.amp = "bf16"
    x = images(4).requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    (gradient,) = torch.autograd.grad(loss, x)
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_mom_ranks_subsets_in_float32_under_autocast():
    """The median subset is a discrete choice: from the same q, k it must be the same under autocast.

    q and k are bf16-exact (as autocast's qkv projection gives them) and near-tied: 1 + j/128 in every coordinate,
    so subset scores differ by less than bfloat16 resolves in their sums (bf16 arithmetic picks another subset in
    most of these cases).
    """
    attention = MoMAttention(16, num_heads=2, num_subsets=5)
    subsets = attention.sample_subsets(40)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        q, k = ((1 + torch.randint(0, 4, (3, 2, 40, 8), generator=generator) / 128).bfloat16() for _ in range(2))
        expected = attention.median_subset(q.float(), k.float(), subsets)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(attention.median_subset(q, k, subsets), expected)


def reference_pgd_under_bf16(model, x, y, eps, alpha, steps, seed):
    """Standard-protocol PGD written out: the network in bf16 autocast, the step and projection in float32."""
    network = model.model
    torch.manual_seed(seed)
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = network((adv - model.mean) / model.std)
        (gradient,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), adv)
        adv = adv.detach() + alpha * gradient.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


def test_pgd_under_bf16_equals_the_written_out_loop_and_keeps_the_budget(one_thread):
    model = build_model("deit_micro_patch4_32", num_classes=10, seed=0)
    model.amp = "bf16"
    x, y = images(4), torch.arange(4)
    eps, alpha, steps = 8 / 255, 2 / 255, 2
    (entry,) = make_entries("PGD", {"alpha": alpha, "steps": steps}, protocol="standard", eps=eps)
    with protocol.seeded_rng("cpu", 11):
        outcome = protocol.make_attack(model, entry)(x, y)
    expected = reference_pgd_under_bf16(model, x, y, eps, alpha, steps, 11)
    assert outcome.adversarial_input.dtype == torch.float32
    torch.testing.assert_close(outcome.adversarial_input, expected, rtol=0, atol=1e-6)
    assert (outcome.adversarial_input - x).abs().max() <= eps + 1e-7  # projected in float32


def test_paper_protocol_runs_the_raw_network_under_the_models_autocast(one_thread):
    model = build_model("deit_micro_patch4_32", num_classes=10, seed=0)
    model.amp = "bf16"
    (entry,) = make_entries("PGD", {"alpha": 0.5 / 255, "steps": 2}, protocol="paper", eps=2 / 255)
    seen = []
    handle = model.model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    rows = attack_evaluator(model, entry, seed=0)(Batch(0, torch.arange(4), images(4), torch.arange(4)))
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # every call of the network, torchattacks' included
    assert max(r["linf"] for r in rows) <= 2 / 255 + 1e-6  # the budget in normalised units, in float32


def test_autocast_logits_is_the_plain_call_when_off():
    network = torch.nn.Linear(4, 2).double()
    x = torch.rand(3, 4, dtype=torch.float64)
    assert torch.equal(autocast_logits(network, x, "off"), network(x))


def test_bf16_eval_and_pgd_on_cpu_record_amp_in_their_job_keys(tmp_path, one_thread):
    digits = open_dataset("digits", limit=12)
    store = Store(tmp_path / "results.sqlite")
    fp32 = load_for_eval("deit_micro_patch4_32", dataset=digits, seed=0, device="cpu")
    bf16 = load_for_eval("deit_micro_patch4_32", dataset=digits, seed=0, device="cpu", amp="bf16")
    assert (fp32.amp, bf16.amp, bf16.module.amp) == ("off", "bf16", "bf16")
    clean32 = run_clean(store, fp32, digits, batch_size=8, progress=False)
    clean16 = run_clean(store, bf16, digits, batch_size=8, progress=False)
    assert clean32["id"] != clean16["id"]  # two jobs: float32 is not run again under another name, nor reused
    assert clean32["settings"] == {"batch_size": 8}  # float32 keys are as before AMP existed
    assert clean16["settings"] == {"batch_size": 8, "amp": "bf16"}
    (pgd,) = make_entries("PGD", {"steps": 2}, protocol="standard", eps=4 / 255)
    attacked = run_attack_suite(store, bf16, digits, [pgd], batch_size=8, progress=False)
    (job,) = attacked["jobs"]
    assert job["settings"]["amp"] == "bf16" and job["summary"]["n"] == 12
    assert 0 <= job["summary"]["robust_accuracy"] <= job["summary"]["clean_accuracy"]
    assert run_clean(store, bf16, digits, batch_size=8, progress=False)["id"] == clean16["id"]  # reused
    frame, _ = long_results(store)
    labels = set(frame["label"])
    assert "clean" in labels and "clean [bf16 autocast]" in labels  # the report says which ran under autocast
    assert any(label.startswith("PGD") and label.endswith("[bf16 autocast]") for label in labels)


def test_fp32_and_bf16_job_keys_differ_and_fp32_keys_are_unchanged():
    common = dict(model="m", checkpoint="c", data="d", task="clean", settings={"batch_size": 8}, seed=0)
    assert runner.job_key(**common) == runner.job_key(**common, amp="off")
    assert runner.job_key(**common)["settings"] == {"batch_size": 8}
    assert runner.job_key(**common, amp="bf16") != runner.job_key(**common, amp="fp16") != runner.job_key(**common)


def test_a_loaded_model_without_amp_is_float32():
    module = build_model("deit_micro_patch4_32", num_classes=10)
    assert LoadedModel(name="m", module=module, checkpoint_id="c", device="cpu").amp == "off" and module.amp == "off"
    with pytest.raises(EllbenchError, match="unknown --amp"):
        load_for_eval("deit_micro_patch4_32", amp="fp8")


# --- on a GPU (benchmarks/gpu_check.py runs these) ----------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_under_cuda_autocast_is_close_to_float32(name, amp):
    model = build_model(name, num_classes=10, seed=0).cuda()
    x = images().cuda()
    with torch.no_grad():
        reference = model(x)
        model.amp = amp
        mixed = model(x)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert (mixed - reference).abs().max() <= 0.05 * reference.abs().max()


@pytest.mark.cuda
def test_pgd_under_bf16_on_cuda_follows_the_written_out_loop():
    """The same loop as on the CPU, on the GPU: random start from the CUDA generator, bf16 network, float32 steps.

    GPU kernels may sum in another order between the two runs, which can flip the sign of a gradient entry near 0:
    nearly every pixel must agree, and every pixel stays within the budget.
    """
    model = build_model("deit_micro_patch4_32", num_classes=10, seed=0).cuda()
    model.amp = "bf16"
    x, y = images(8).cuda(), (torch.arange(8) % 10).cuda()
    eps, alpha, steps = 8 / 255, 2 / 255, 3
    (entry,) = make_entries("PGD", {"alpha": alpha, "steps": steps}, protocol="standard", eps=eps)
    with protocol.seeded_rng("cuda", 11):
        outcome = protocol.make_attack(model, entry)(x, y)
    expected = reference_pgd_under_bf16_cuda(model, x, y, eps, alpha, steps, 11)
    assert outcome.adversarial_input.dtype == torch.float32 and outcome.adversarial_input.is_cuda
    assert ((outcome.adversarial_input - expected).abs() > 1e-5).float().mean() < 0.01
    assert (outcome.adversarial_input - x).abs().max() <= eps + 1e-6


def reference_pgd_under_bf16_cuda(model, x, y, eps, alpha, steps, seed):
    network = model.model
    torch.manual_seed(seed)  # seeds the CUDA generator too, as seeded_rng does
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = network((adv - model.mean) / model.std)
        (gradient,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), adv)
        adv = adv.detach() + alpha * gradient.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


@pytest.mark.cuda
def test_a_clean_job_on_cuda_with_workers_agrees_with_the_cpu(tmp_path):
    """The CUDA path end to end (pinned batches from 2 workers, non-blocking copies): the same predictions as on the
    CPU wherever the CPU's top-2 margin exceeds what TF32 convolutions and kernel order can move."""
    digits = open_dataset("digits", limit=64)
    cpu = load_for_eval("deit_micro_patch4_32", dataset=digits, seed=0, device="cpu")
    gpu = load_for_eval("deit_micro_patch4_32", dataset=digits, seed=0, device="cuda")
    on_gpu = run_clean(Store(tmp_path / "gpu.sqlite"), gpu, digits, batch_size=16, workers=2, progress=False)
    assert on_gpu["provenance"]["loader_workers"] == 2 and on_gpu["provenance"]["device"].startswith("cuda")
    rows = Store(tmp_path / "gpu.sqlite").outcomes(on_gpu["id"]).sort_values("idx")
    with torch.no_grad():
        logits = cpu.module(digits.get_batch(torch.arange(64))[0])
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert torch.equal(torch.tensor(rows["pred"].tolist())[clear], logits.argmax(1)[clear])
