"""Attacks: suites and validation, the paper protocol against its formula, the standard one against torchattacks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from ellbench.attacks import checks, suite
from ellbench.attacks import protocol as attack_protocol
from ellbench.errors import EllbenchError
from ellbench.resources import list_suites
from ellbench.runner import Batch, JobSpec, run
from ellbench.tasks import attack as attack_task

SEED = 7


class TinyNormalized(nn.Module):
    """A NormalizedModel stand-in: [0, 1] images -> (x - mean) / std -> a small tanh MLP on 8x8 inputs."""

    def __init__(self, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), classes=4, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, classes))
        self.model.to(dtype)
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def batch(n=6, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 8, 8, generator=generator, dtype=dtype)
    images[:, :, 0, 0], images[:, :, 0, 1] = 0.0, 1.0  # pixels on the edges of [0, 1]: clipping would show there
    labels = torch.randint(0, 4, (n,), generator=generator)
    return torch.arange(10, 10 + n), images, labels


def entry(attack, protocol, eps, **params):
    (only,) = suite.make_entries(attack, params, protocol=protocol, eps=eps)
    return only


def evaluator(model, item, *, seed):
    """The attack task's per-batch evaluation, called with (indices, images, labels) of one batch."""
    evaluate = attack_task.attack_evaluator(model, item, seed=seed)
    return lambda indices, images, labels: evaluate(Batch(0, indices, images, labels))


def cross_entropy_grad(network, z, y):
    z = z.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(network(z), y), z)[0]


# --- the paper protocol against the formula (cleverhans semantics, written out), in float64 ----------------------


def reference_paper_pgd(model, images, eps, alpha, steps, seed):
    """cleverhans PGD on normalised inputs: uniform start, sign steps, projection, no clip, predicted labels."""
    z0 = (images - model.mean) / model.std
    y = model.model(z0).argmax(1)
    torch.manual_seed(seed)
    z = z0 + torch.empty_like(z0).uniform_(-eps, eps)
    for _ in range(steps):
        z = z + alpha * cross_entropy_grad(model.model, z, y).sign()
        z = z0 + (z - z0).clamp(-eps, eps)
    return z0, z


def test_paper_pgd_equals_formula_without_clipping():
    model = TinyNormalized(dtype=torch.float64)
    indices, images, labels = batch(dtype=torch.float64)
    eps = 6 / 255
    pgd = entry("PGD", "paper", eps, alpha=0.15 * eps, steps=4, random_start=True)
    seed = attack_protocol.batch_seed(SEED, int(indices[0]))
    with attack_protocol.seeded_rng("cpu", seed):
        outcome = attack_protocol.make_attack(model, pgd)(images, labels)
    z0, expected = reference_paper_pgd(model, images, eps, 0.15 * eps, 4, seed)
    torch.testing.assert_close(outcome.clean_input, z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(outcome.adversarial_input, expected, rtol=0, atol=1e-10)
    assert torch.equal(outcome.target, model(images).argmax(1))  # the model's own predictions, not the labels
    outside = (outcome.adversarial_input * model.std + model.mean - 0.5).abs() > 0.5
    assert outside.any()  # nothing clipped to the pixel range

    rows = evaluator(model, pgd, seed=SEED)(indices, images, labels)
    linf = (expected - z0).flatten(1).abs().amax(1)
    assert [r["pred"] for r in rows] == model.model(expected).argmax(1).tolist()
    assert [r["target"] for r in rows] == model(images).argmax(1).tolist()
    assert all(r["correct"] == int(r["pred"] == r["label"]) for r in rows)
    assert [r["linf"] for r in rows] == pytest.approx(linf.tolist(), abs=1e-10)
    assert max(r["linf"] for r in rows) == pytest.approx(eps, abs=1e-10)


def test_paper_fgsm_equals_formula():
    model = TinyNormalized(dtype=torch.float64)
    _, images, labels = batch(dtype=torch.float64)
    eps = 3 / 255
    outcome = attack_protocol.make_attack(model, entry("FGSM", "paper", eps))(images, labels)
    z0 = (images - model.mean) / model.std
    expected = z0 + eps * cross_entropy_grad(model.model, z0, model.model(z0).argmax(1)).sign()
    torch.testing.assert_close(outcome.adversarial_input, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(outcome.logits, model.model(expected), rtol=0, atol=1e-10)


@pytest.mark.parametrize("attack, params", [
    ("PGD", dict(alpha=1 / 255, steps=3)),
    ("SPSA", dict(delta=0.01, lr=0.01, nb_iter=3, nb_sample=8, max_batch_size=4)),
    ("APGD", dict(steps=4)),
    ("Square", dict(n_queries=20)),
])
def test_paper_protocol_equals_torchattacks_where_its_clamp_cannot_bind(attack, params):
    # With mean -4 and std 10 the normalised inputs live in [0.4, 0.5], so torchattacks can attack the raw network
    # directly with its own units (eps, step, SPSA's delta and lr): the paper protocol's rescaling must agree.
    model = TinyNormalized(mean=(-4.0,) * 3, std=(10.0,) * 3, dtype=torch.float64)
    _, images, labels = batch(dtype=torch.float64)
    eps = 4 / 255
    torch.manual_seed(3)
    outcome = attack_protocol.make_attack(model, entry(attack, "paper", eps, **params))(images, labels)
    z0 = (images - model.mean) / model.std
    torch.manual_seed(3)
    direct = getattr(torchattacks, attack)(model.model, eps=eps, **params)(z0, model.model(z0).argmax(1))
    # SPSA alone differs by Adam's epsilon (1e-8), which acts in rescaled units: a relative 1e-5 of a step, no more.
    torch.testing.assert_close(outcome.adversarial_input, direct, rtol=0, atol=1e-5 if attack == "SPSA" else 1e-9)


def test_paper_protocol_is_the_standard_one_scaled_by_std_away_from_the_pixel_edges():
    # With std 0.5 everywhere, eps 2e in normalised space is eps e in pixels; on images away from 0 and 1 (so that
    # clipping cannot act) and with the model's predictions as labels, both protocols must take the same path.
    model = TinyNormalized(mean=(0.5,) * 3, std=(0.5,) * 3, dtype=torch.float64)
    indices, images, _ = batch(dtype=torch.float64)
    images = 0.3 + 0.4 * images
    predicted = model(images).argmax(1)
    eps = 4 / 255
    standard = attack_protocol.make_attack(model, entry("PGD", "standard", eps, alpha=eps / 3, steps=3))
    paper = attack_protocol.make_attack(model, entry("PGD", "paper", 2 * eps, alpha=2 * eps / 3, steps=3))
    torch.manual_seed(5)
    in_pixels = standard(images, predicted)
    torch.manual_seed(5)
    in_normalised = paper(images, torch.zeros_like(predicted))  # the paper protocol ignores the labels
    torch.testing.assert_close(in_normalised.adversarial_input, (in_pixels.adversarial_input - 0.5) / 0.5,
                               rtol=0, atol=1e-10)


def test_paper_coordinates_keep_the_clamp_away():
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
    eps = 6 / 255
    offset, scale = attack_protocol.paper_coordinates(mean, std, 2 * eps)
    lowest, highest = min((0 - mean) / std).item(), max((1 - mean) / std).item()
    assert (lowest - 2 * eps - offset) / scale == pytest.approx(0.0, abs=1e-12)
    assert (highest + 2 * eps - offset) / scale == pytest.approx(1.0, abs=1e-12)


# --- the standard protocol is torchattacks itself -----------------------------------------------------------------


@pytest.mark.parametrize("attack, params", [("PGD", dict(alpha=1 / 255, steps=3, random_start=True)), ("FGSM", {})])
def test_standard_protocol_is_exactly_torchattacks(attack, params):
    model = TinyNormalized()
    indices, images, labels = batch()
    eps = 8 / 255
    seed = attack_protocol.batch_seed(SEED, int(indices[0]))
    torch.manual_seed(seed)
    adv = getattr(torchattacks, attack)(model, eps=eps, **params)(images, labels)
    rows = evaluator(model, entry(attack, "standard", eps, **params), seed=SEED)(
        indices, images, labels)
    delta = (adv - images).flatten(1).double()
    assert [r["pred"] for r in rows] == model(adv).argmax(1).tolist()
    assert [r["linf"] for r in rows] == delta.abs().amax(1).tolist()
    assert [r["l2"] for r in rows] == delta.norm(dim=1).tolist()
    assert [r["target"] for r in rows] == labels.tolist()
    assert [r["clean_pred"] for r in rows] == model(images).argmax(1).tolist()


def test_budgets_hold_and_trust_checks_pass():
    model = TinyNormalized()
    indices, images, labels = batch()
    eps = 2 / 255
    results = []
    for attack, params in [("FGSM", {}), ("PGD", dict(alpha=0.5 * eps, steps=3)),
                           ("SPSA", dict(nb_iter=2, nb_sample=4, max_batch_size=4))]:
        for protocol in suite.PROTOCOLS:
            item = entry(attack, protocol, eps, **params)
            rows = evaluator(model, item, seed=SEED)(indices, images, labels)
            assert max(r["linf"] for r in rows) <= eps * (1 + checks.BUDGET_RTOL) + checks.BUDGET_ATOL
            summary = checks.summarize_attack(_frame(rows))
            results.append(checks.result_record(item, summary))
    budget = [c for c in checks.trust_checks(results) if c["check"] == "budget"]
    assert len(budget) == 6 and all(c["status"] == "ok" for c in budget)


def test_same_seed_same_outcome_and_rng_left_alone():
    model = TinyNormalized()
    indices, images, labels = batch()
    evaluate = evaluator(model, entry("PGD", "paper", 4 / 255, steps=2, alpha=1 / 255), seed=1)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = evaluate(indices, images, labels)
    assert torch.equal(torch.rand(3), before)  # the attack's draws come from a forked generator
    assert evaluate(indices, images, labels) == first
    other = evaluator(model, entry("PGD", "paper", 4 / 255, steps=2, alpha=1 / 255), seed=2)
    assert other(indices, images, labels) != first


@pytest.mark.parametrize("protocol", suite.PROTOCOLS)
def test_attacks_leave_dropout_in_eval_mode(protocol):
    # torchattacks restores the training flag it found on the module it was given; a fresh wrapper is in training
    # mode unless told otherwise, and would leave dropout (or RVT's BatchNorm) switched on after the first batch.
    model = TinyNormalized()
    model.model.append(nn.Dropout(0.5))
    indices, images, labels = batch()
    evaluate = evaluator(model, entry("PGD", protocol, 4 / 255, steps=2, alpha=1 / 255), seed=0)
    first = evaluate(indices, images, labels)
    assert not model.training and not model.model.training
    assert evaluate(indices, images, labels) == first


def test_interrupted_attack_run_resumes_to_the_identical_table(tmp_path):
    from ellbench.runner import job_key
    from ellbench.store import Store

    def run_job(store, key, dataset, evaluate, *, batch_size, summarize=None):
        return run(store, JobSpec(key=key, dataset=dataset, evaluate=evaluate, batch_size=batch_size,
                                  summarize=summarize), progress=False)

    model = TinyNormalized()
    _, images, labels = batch(n=10)
    dataset = list(zip(images, labels.tolist(), strict=True))
    item = entry("PGD", "paper", 4 / 255, steps=2, alpha=1 / 255)
    key = job_key(model="tiny", checkpoint="none", data="t", task="attack", settings=item.settings(), seed=SEED)
    evaluate = attack_task.attack_evaluator(model, item, seed=SEED)

    def interrupted(batch):
        if int(batch.indices[0]) >= 4:
            raise KeyboardInterrupt
        return evaluate(batch)

    whole = Store(tmp_path / "whole.sqlite")
    done = run_job(whole, key, dataset, evaluate, batch_size=4, summarize=checks.summarize_attack)
    resumed = Store(tmp_path / "resumed.sqlite")
    with pytest.raises(KeyboardInterrupt):
        run_job(resumed, key, dataset, interrupted, batch_size=4)
    again = run_job(resumed, key, dataset, evaluate, batch_size=4, summarize=checks.summarize_attack)
    assert again["id"] == done["id"]
    assert whole.outcomes(done["id"]).equals(resumed.outcomes(again["id"]))
    assert again["summary"]["batches_resumed"] == 1


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows)


# --- trust checks on hand-made results ---------------------------------------------------------------------------


def _result(name, attack, eps, robust, clean=0.9, linf=None, protocol="paper", suite="s"):
    return {"suite": suite, "name": name, "attack": attack, "protocol": protocol, "eps": eps, "clean_accuracy": clean,
            "robust_accuracy": robust, "max_linf": eps if linf is None else linf, "n": 100}


def test_trust_checks_flag_each_violation():
    results = [
        _result("PGD", "PGD", 1 / 255, 0.5), _result("PGD", "PGD", 2 / 255, 0.6),  # rises with eps
        _result("FGSM", "FGSM", 1 / 255, 0.4), _result("FGSM", "FGSM", 2 / 255, 0.3),  # PGD weaker: masking?
        _result("SPSA", "SPSA", 1 / 255, 0.95, linf=1.5 / 255),  # over budget and above clean
    ]
    flagged = {(c["check"], c["name"], c["eps"]) for c in checks.trust_checks(results) if c["status"] != "ok"}
    assert flagged == {
        ("monotone-in-eps", "PGD", 2 / 255),
        ("PGD>=FGSM", "PGD", 1 / 255), ("PGD>=FGSM", "PGD", 2 / 255),
        ("budget", "SPSA", 1 / 255), ("robust<=clean", "SPSA", 1 / 255),
    }
    masking = [c for c in checks.trust_checks(results) if c["check"] == "PGD>=FGSM"]
    assert all("gradient masking" in c["detail"] for c in masking)
    healthy = [_result("PGD", "PGD", 1 / 255, 0.3), _result("PGD", "PGD", 2 / 255, 0.1),
               _result("FGSM", "FGSM", 1 / 255, 0.4), _result("FGSM", "FGSM", 2 / 255, 0.2)]
    assert all(c["status"] == "ok" for c in checks.trust_checks(healthy))
    # A second suite's weaker PGD of the same name is compared within its own suite only.
    other_suite = [_result("PGD", "PGD", 1 / 255, 0.5, suite="quick"),
                   _result("FGSM", "FGSM", 1 / 255, 0.6, suite="quick")]
    assert all(c["status"] == "ok" for c in checks.trust_checks(healthy + other_suite))


# --- suites, parameters and bad input ------------------------------------------------------------------------------


def test_shipped_suites_load_with_the_papers_settings():
    assert {"paper", "standard", "quick"} <= set(list_suites("attacks"))
    paper = suite.load_suite("paper")
    assert {e.protocol for e in paper} == {"paper"}
    assert sorted({round(e.eps * 255, 9) for e in paper}) == [1, 2, 3, 4, 5, 6]
    pgd = next(e for e in paper if e.attack == "PGD" and e.eps_text == "2/255")
    assert pgd.params == {"steps": 20, "random_start": True, "alpha": pytest.approx(0.15 * 2 / 255)}
    spsa = next(e for e in paper if e.attack == "SPSA")
    assert {k: spsa.params[k] for k in ("nb_iter", "lr", "delta", "nb_sample")} == \
        {"nb_iter": 40, "lr": 0.01, "delta": 0.01, "nb_sample": 128}
    standard = suite.load_suite("standard")
    assert {e.protocol for e in standard} == {"standard"}
    assert sorted({e.eps_text for e in standard}) == ["1/255", "2/255", "4/255", "8/255"]
    assert len(suite.load_suite("quick")) == 6


def test_parse_params_types():
    params = suite.parse_params(["eps=4/255", "steps=10", "alpha=0.15*eps", "random_start=false", "norm=Linf",
                                   "lr=1e-2"])
    assert params == {"eps": 4 / 255, "steps": 10, "alpha": suite.PerEps(0.15), "random_start": False,
                      "norm": "Linf", "lr": 0.01}
    assert suite.parse_params(["eps=1/255,2/255"]) == {"eps": [1 / 255, 2 / 255]}
    entries = suite.make_entries("PGD", suite.parse_params(["eps=1/255,2/255", "alpha=0.25*eps"]))
    assert [e.params["alpha"] for e in entries] == pytest.approx([0.25 / 255, 0.5 / 255])
    assert checks.format_eps(8 / 255) == "8/255" and checks.format_eps(0.3) == "0.3"
    assert math.isclose(suite.parse_eps("8/255"), 8 / 255)


def test_any_torchattacks_class_by_name():
    (cw,) = suite.make_entries("CW", {"steps": 2, "c": 0.5})
    assert cw.eps is None and cw.params == {"steps": 2, "c": 0.5}
    (square,) = suite.make_entries("Square", {"eps": "4/255", "n_queries": 10})
    assert square.kwargs() == {"eps": 4 / 255, "n_queries": 10}


@pytest.mark.parametrize("attack, params, protocol, message", [
    ("PGD", {"eps": -1 / 255}, "standard", "eps must be between 0 and 1"),
    ("PGD", {"eps": 1.5}, "standard", "eps must be between 0 and 1"),
    ("PGD", {"eps": "4/0"}, "standard", "division by zero"),
    ("PGD", {"eps": 0.1, "steps": 0}, "standard", "steps must be at least 1"),
    ("SPSA", {"eps": 0.1, "nb_iter": 0}, "paper", "nb_iter must be at least 1"),
    ("PGD", {"eps": 0.1, "steps": 2.5}, "standard", "steps must be a whole number"),
    ("PGD", {"eps": 0.1, "alpha": 0}, "standard", "alpha must be positive"),
    ("PGD", {"eps": 0.1, "stepz": 3}, "standard", "PGD has no setting stepz"),
    ("PGD", {}, "standard", "needs a budget"),
    ("pgd", {"eps": 0.1}, "standard", "did you mean PGD"),
    ("NoSuchAttack", {"eps": 0.1}, "standard", "unknown attack 'NoSuchAttack'"),
    ("MultiAttack", {}, "standard", "unknown attack 'MultiAttack'"),
    ("CW", {"eps": 0.1}, "standard", "CW takes no eps"),
    ("CW", {}, "paper", "cannot run under the paper protocol"),
    ("APGD", {"eps": 0.1, "norm": "L2"}, "paper", "L-inf only"),
    ("PGD", {"eps": 0.1}, "pixel", "unknown protocol"),
])
def test_bad_settings_give_one_line(attack, params, protocol, message):
    with pytest.raises(EllbenchError, match=message) as caught:
        suite.make_entries(attack, params, protocol=protocol)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ('protocol = "paper"\neps = [0.1]\n[[attacks]\nclass = "PGD"\n', "malformed attack suite"),
    ('protocol = "paper"\neps = [0.1]\n', "at least one"),
    ('protocol = "paper"\neps = ["-1/255"]\n[[attacks]]\nclass = "FGSM"\n', "eps must be between 0 and 1"),
    ('protocol = "paper"\neps = [0.1]\n[[attacks]]\nclass = "PGD"\nparams = { steps = 0 }\n', "at least 1"),
    ('protocol = "paper"\neps = [0.1]\n[[attacks]]\nclass = "Nope"\n', "unknown attack"),
    ('protocol = "paper"\neps = [0.1]\n[[attacks]]\nclass = "PGD"\nstep = 3\n', "unknown key 'step'"),
    ('protocol = "paper"\neps = [0.1]\ncolour = 1\n[[attacks]]\nclass = "PGD"\n', "unknown key 'colour'"),
    ('protocol = "paper"\neps = [0.1]\n[[attacks]]\nclass = "FGSM"\n[[attacks]]\nclass = "FGSM"\n', "twice"),
])
def test_bad_suite_files_give_one_line(tmp_path, text, message):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(EllbenchError, match=message) as caught:
        suite.load_suite(path)
    assert "\n" not in str(caught.value)


def test_unknown_suite_and_missing_file():
    with pytest.raises(EllbenchError, match="unknown attack suite 'nope'; available: .*paper"):
        suite.load_suite("nope")
    with pytest.raises(EllbenchError, match="not found"):
        suite.load_suite("/no/such/suite.toml")


def test_images_outside_unit_range_are_refused():
    model = TinyNormalized()
    indices, images, labels = batch()
    evaluate = evaluator(model, entry("FGSM", "paper", 1 / 255), seed=0)
    with pytest.raises(EllbenchError, match=r"images in \[0, 1\]"):
        evaluate(indices, images * 2 - 0.5, labels)


# --- the suite runner on a real ellbench model ---------------------------------------------------------------------


class TinySet(torch.utils.data.Dataset):
    """Eight 8x8 images, with the attributes the runner reads from an ellbench data set."""

    fingerprint = "tiny-8x8"

    def __init__(self):
        _, self.images, self.labels = batch(n=8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def test_run_attack_suite_on_elliptical_micro_records_jobs_and_checks(tmp_path):
    from ellbench.models.factory import build_model
    from ellbench.models.loading import LoadedModel
    from ellbench.store import Store

    module = build_model("elliptical_micro_patch4_32", img_size=8, num_classes=4, seed=0)
    loaded = LoadedModel(name="elliptical_micro_patch4_32", module=module, checkpoint_id="random-init:seed=0",
                         device="cpu")
    entries = [e for e in suite.load_suite("quick") if e.eps_text != "8/255"]
    store = Store(tmp_path / "results.sqlite")
    first = attack_task.run_attack_suite(store, loaded, TinySet(), entries, batch_size=4, seed=0, progress=False)
    assert len(first["jobs"]) == len(entries) == 4
    for job, item in zip(first["jobs"], entries, strict=True):
        assert job["status"] == "done" and job["settings"]["eps"] == item.eps
        assert job["summary"]["max_linf"] <= item.eps * (1 + checks.BUDGET_RTOL) + checks.BUDGET_ATOL
        outcomes = store.outcomes(job["id"])
        assert job["summary"]["n"] == len(outcomes) == 8
        assert job["summary"]["robust_accuracy"] == outcomes["correct"].mean()
        assert job["summary"]["clean_accuracy"] == outcomes["clean_correct"].mean()
    assert {c["check"] for c in first["checks"]} >= {"budget", "robust<=clean", "PGD>=FGSM"}
    assert all(c["status"] == "ok" for c in first["checks"] if c["check"] == "budget")
    (recorded,) = store.jobs(task="attack-checks")
    assert recorded["summary"]["checks"] == first["checks"]
    again = attack_task.run_attack_suite(store, loaded, TinySet(), entries, batch_size=4, seed=0, progress=False)
    assert [j["id"] for j in again["jobs"]] == [j["id"] for j in first["jobs"]]
    assert all(len(store.attempts(j["id"])) == 1 for j in again["jobs"])  # reused, not re-run


# --- SPSA as the paper's code ran it, beside the correct SPSA -------------------------------------------------------


def test_paper_suite_holds_both_spsa_variants_as_separate_jobs():
    entries = suite.load_suite("paper")
    by_name = {}
    for item in entries:
        by_name.setdefault(item.name, []).append(item.eps)
    assert by_name["SPSA"] == by_name["SPSA-cleverhans"] == [k / 255 for k in range(1, 7)]
    spsa = [e for e in entries if e.attack in ("SPSA", "SPSA-cleverhans")]
    keys = {attack_task.attack_task_settings(e, 8)["attack"] + str(e.eps): attack_task.attack_task_settings(e, 8)
            for e in spsa}
    assert len(keys) == 12  # one job per variant and budget
    cleverhans = next(e for e in spsa if e.attack == "SPSA-cleverhans")
    assert cleverhans.params == {"nb_iter": 40, "lr": 0.01, "delta": 0.01, "nb_sample": 128, "spsa_iters": 1}
    assert "cleverhans" in cleverhans.settings()["implementation"] and "torchattacks" not in cleverhans.settings()


def test_spsa_cleverhans_runs_on_the_normalised_input_under_the_paper_protocol_only():
    from ellbench.attacks.spsa_cleverhans import SPSACleverhans

    model = TinyNormalized()
    indices, images, labels = batch(n=3)
    item = entry("SPSA-cleverhans", "paper", 4 / 255, nb_iter=3, nb_sample=4)
    with attack_protocol.seeded_rng("cpu", 11):
        outcome = attack_protocol.make_attack(model, item)(images, labels)
    z = (images - model.mean) / model.std
    clean_pred = model(images).argmax(1)
    torch.manual_seed(11)
    expected = SPSACleverhans(model.model, eps=4 / 255, nb_iter=3, nb_sample=4)(z, clean_pred)
    assert torch.equal(outcome.adversarial_input, expected) and torch.equal(outcome.clean_input, z)
    assert torch.equal(outcome.target, clean_pred)  # the model's own predictions, as cleverhans' y=None
    assert (outcome.adversarial_input - z).abs().max() <= 4 / 255 + 1e-7
    with pytest.raises(EllbenchError, match="paper protocol"):
        entry("SPSA-cleverhans", "standard", 4 / 255)
    with pytest.raises(EllbenchError, match="no setting generator"):
        entry("SPSA-cleverhans", "paper", 4 / 255, generator=3)
    with pytest.raises(EllbenchError, match="spsa_iters must be at least 1"):
        entry("SPSA-cleverhans", "paper", 4 / 255, spsa_iters=0)


def test_the_attack_command_stores_both_spsa_variants(run_ellbench, tmp_path):
    """The paper suite's two SPSA entries through the real CLI (fewer iterations: 40 x 256 forwards per image and
    budget is minutes on a CPU), each variant its own job."""
    from ellbench.resources import resource_path

    text = resource_path("attacks", "paper.toml").read_text()
    text = text.replace('eps = ["1/255", "2/255", "3/255", "4/255", "5/255", "6/255"]', 'eps = ["2/255"]')
    text = text.replace("nb_iter = 40", "nb_iter = 2").replace("nb_sample = 128", "nb_sample = 4")
    text = text.replace("max_batch_size = 64", "max_batch_size = 4").replace("steps = 20", "steps = 2")
    reduced = tmp_path / "paper-reduced.toml"
    reduced.write_text(text)
    result = run_ellbench("attack", "deit_micro_patch4_32", "--data", "digits", "--suite", str(reduced), "--limit",
                          "3", "--batch-size", "3", "--device", "cpu", "--out", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    from ellbench.store import Store

    printed = {row["attack"] for row in json.loads(result.stdout)["results"]}
    assert {"SPSA eps=2/255", "SPSA-cleverhans eps=2/255"} <= printed
    store = Store.in_folder(tmp_path / "out")
    jobs = {job["settings"]["attack"]: job for job in store.jobs(task="attack")}
    assert {"SPSA", "SPSA-cleverhans"} <= set(jobs) and jobs["SPSA"]["id"] != jobs["SPSA-cleverhans"]["id"]
    assert all(len(store.outcomes(job["id"])) == 3 for job in jobs.values())
