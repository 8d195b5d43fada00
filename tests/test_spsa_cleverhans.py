"""SPSA-cleverhans: a hand-worked linear case, cleverhans' draw order and Adam written out, the correct SPSA beside it.

The linear model below has two pixels and three classes; the attacked label is class 0. Around the clean image
x = (0.5, 0.5) the strongest other class is 1, whose margin gradient is (1, 0); around 2x = (1, 1) it is class 2,
whose margin gradient is (0, 3). An SPSA estimate taken around the current iterate therefore pushes pixel 1, and
cleverhans' estimate (taken around 2x) pushes pixel 2.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchattacks
from torch import nn

from ellbench.attacks.spsa_cleverhans import ATTACK_NAME, SPSACleverhans, margin_logit_loss
from ellbench.errors import EllbenchError

torch.set_num_threads(1)

X = (0.5, 0.5)
LABEL = 0
# Gradient of the attack loss (minus the margin) in closed form, for the class that is the runner-up there.
LOSS_GRADIENT_AROUND_2X = (0.0, -3.0)  # class 2: -(w2 - w0)
LOSS_GRADIENT_AROUND_X = (-1.0, 0.0)  # class 1: -(w1 - w0), for every point within 0.07 of x (checked below)


def linear_model(dtype=torch.float64) -> nn.Module:
    """logits = W z + b: w0 = (0, 0), b0 = 5; w1 = (1, 0), b1 = 0; w2 = (0, 3), b2 = -1.5; z has shape [1, 1, 2]."""
    linear = nn.Linear(2, 3).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]))
        linear.bias.copy_(torch.tensor([5.0, 0.0, -1.5]))
    return nn.Sequential(nn.Flatten(), linear).eval()


def image(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(X, dtype=dtype).view(1, 1, 1, 2)


def test_runner_up_classes_of_the_hand_worked_case():
    model = linear_model()
    around_x = image() + 0.07 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).view(4, 1, 1, 2)
    assert model(around_x)[:, 1:].argmax(1).add(1).tolist() == [1, 1, 1, 1]
    around_2x = 2 * image() + 0.01 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).view(4, 1, 1, 2)
    assert model(around_2x)[:, 1:].argmax(1).add(1).tolist() == [2, 2, 2, 2]


def test_margin_logit_loss_by_hand():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, -1.0]])
    assert margin_logit_loss(logits, torch.tensor([0, 1])).tolist() == [2.0 - 5.0, 0.0 - 3.0]
    assert margin_logit_loss(logits, torch.tensor([2, 0])).tolist() == [5.0 - 2.0, 3.0 - 0.0]


def test_gradient_estimate_is_taken_around_2x_for_fixed_directions():
    """Three fixed +-1 directions s_n: for a loss linear around 2x the estimate is mean_n (grad . s_n) s_n, exactly."""
    signs = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).view(3, 1, 1, 2)
    attack = SPSACleverhans(linear_model(), eps=0.05, nb_sample=3, delta=0.01)
    estimate = attack.gradient_estimate(image(), torch.tensor([LABEL]), signs=signs)
    # Around 2x the loss gradient is (0, -3): (1/3) [3 (1, -1) - 3 (1, 1) - 3 (-1, 1)] = (1, -3).
    expected = torch.tensor([1.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(estimate.flatten(), expected, rtol=1e-12, atol=1e-12)
    # Around x (where a correct SPSA starts) it would be (-1, 0): (1/3) [-(1, -1) - (1, 1) + (-1, 1)] = (-1, 1/3).
    assert not torch.allclose(estimate.flatten(), torch.tensor([-1.0, 1 / 3], dtype=torch.float64))


def reference_run(point: str, *, eps, nb_iter, nb_sample, lr, delta, seed) -> torch.Tensor:
    """The attack written out: cleverhans' draw order, the closed-form estimate, Adam by its formula, projection.

    point="2x" is cleverhans' estimate; point="iterate" is what a correct SPSA would estimate on this model.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor(X, dtype=torch.float64)
    gradient = torch.tensor(LOSS_GRADIENT_AROUND_2X if point == "2x" else LOSS_GRADIENT_AROUND_X, dtype=torch.float64)
    perturbation = ((torch.rand(1, 1, 1, 2, generator=generator, dtype=torch.float64) * 2 - 1) * eps).flatten()
    perturbation = perturbation.clamp(-eps, eps)
    first_moment = torch.zeros(2, dtype=torch.float64)
    second_moment = torch.zeros(2, dtype=torch.float64)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    for step in range(1, nb_iter + 1):
        uniform = torch.rand(nb_sample, 1, 1, 2, generator=generator, dtype=torch.float64).view(nb_sample, 2)
        signs = torch.sign(uniform - 0.5)
        estimate = ((signs @ gradient)[:, None] * signs).mean(0)  # (1/N) sum_n (g . s_n) s_n
        first_moment = beta1 * first_moment + (1 - beta1) * estimate
        second_moment = beta2 * second_moment + (1 - beta2) * estimate**2
        corrected_first = first_moment / (1 - beta1**step)
        corrected_second = second_moment / (1 - beta2**step)
        perturbation = perturbation - lr * corrected_first / (corrected_second.sqrt() + adam_eps)
        perturbation = perturbation.clamp(-eps, eps)
    return (x + perturbation).view(1, 1, 1, 2)


def test_attack_matches_the_written_out_algorithm_and_not_a_correct_spsa():
    settings = dict(eps=0.05, nb_iter=6, nb_sample=5, lr=0.01, delta=0.01)
    attack = SPSACleverhans(linear_model(), **settings, generator=torch.Generator().manual_seed(3))
    adversarial = attack(image(), torch.tensor([LABEL]))
    expected = reference_run("2x", **settings, seed=3)
    torch.testing.assert_close(adversarial, expected, rtol=1e-9, atol=1e-12)
    correct_spsa = reference_run("iterate", **settings, seed=3)
    assert (adversarial - correct_spsa).abs().max() > 1e-3


def test_spsa_cleverhans_and_torchattacks_spsa_differ_on_the_same_input_and_seed():
    """The correct SPSA pushes pixel 1 (class 1's direction around x); cleverhans' pushes pixel 2 (class 2's, at 2x)."""
    model = linear_model(torch.float32)
    x = image(torch.float32)
    labels = torch.tensor([LABEL])
    eps, settings = 0.05, dict(nb_iter=20, lr=0.01, delta=0.01, nb_sample=32)
    torch.manual_seed(0)
    correct = torchattacks.SPSA(model, eps=eps, max_batch_size=32, **settings)(x, labels)
    torch.manual_seed(0)
    quirky = SPSACleverhans(model, eps=eps, **settings)(x, labels)
    assert not torch.allclose(correct, quirky)
    step_correct, step_quirky = (correct - x).flatten(), (quirky - x).flatten()
    assert step_correct[0] == pytest.approx(eps, abs=1e-6)
    assert step_quirky[1] == pytest.approx(eps, abs=1e-6)
    # The correct attack raises the runner-up logit (class 1) by eps; cleverhans' only by its random start's share.
    with torch.no_grad():
        assert float(model(correct)[0, 1]) == pytest.approx(0.5 + eps, abs=1e-6)


def test_bit_for_bit_equal_to_cleverhans_when_installed():
    """cleverhans 4.0.0's own spsa on the same random state (skipped when cleverhans is not installed)."""
    spsa = pytest.importorskip("cleverhans.torch.attacks.spsa").spsa
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    inputs = 2 * torch.randn(3, 3, 4, 4)  # normalised-looking values, well outside [0, 1]
    for eps in (1 / 255, 0.05):
        torch.manual_seed(11)
        expected = spsa(network, inputs, eps, 5, spsa_samples=8, spsa_iters=2)
        torch.manual_seed(11)
        actual = SPSACleverhans(network, eps=eps, nb_iter=5, nb_sample=8, spsa_iters=2)(inputs)
        assert torch.equal(actual, expected)


class CountingModel(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.batch_sizes: list[int] = []

    def forward(self, z):
        self.batch_sizes.append(len(z))
        return self.network(z)


def small_batch(dtype=torch.float64):
    generator = torch.Generator().manual_seed(5)
    return 3 * torch.randn(4, 1, 1, 2, generator=generator, dtype=dtype) + 0.5  # spans far outside [0, 1]


def test_forward_passes_and_max_batch_size_leave_the_result_unchanged():
    inputs, labels = small_batch(), torch.tensor([0, 1, 2, 0])
    settings = dict(eps=0.1, nb_iter=3, nb_sample=6, spsa_iters=2)
    whole = CountingModel(linear_model())
    chunked = CountingModel(linear_model())
    out_whole = SPSACleverhans(whole, **settings, generator=torch.Generator().manual_seed(2))(inputs, labels)
    out_chunked = SPSACleverhans(chunked, **settings, max_batch_size=5,
                                 generator=torch.Generator().manual_seed(2))(inputs, labels)
    assert torch.equal(out_whole, out_chunked)  # a linear model computes each row alike at any batch size
    per_image_steps = settings["nb_iter"] * settings["spsa_iters"]
    assert whole.batch_sizes == [2 * 6] * (4 * per_image_steps)
    assert chunked.batch_sizes == [5, 5, 2] * (4 * per_image_steps)


def test_budget_without_clipping_and_deterministic_for_a_seed():
    inputs, labels = small_batch(torch.float32), torch.tensor([0, 1, 2, 0])
    eps = 0.1

    def run(seed):
        torch.manual_seed(seed)
        return SPSACleverhans(linear_model(torch.float32), eps=eps, nb_iter=5, nb_sample=4)(inputs, labels)

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    linf = (first - inputs).abs().amax()
    assert linf <= eps * (1 + 1e-5)
    assert linf > 0.9 * eps  # the projection binds, so the budget is really used
    assert first.min() < -1 and first.max() > 2  # nothing is clipped to [0, 1]


def test_batch_equals_one_image_at_a_time_and_labels_default_to_predictions():
    inputs = small_batch()
    model = linear_model()
    predictions = model(inputs).argmax(1)
    batch = SPSACleverhans(model, eps=0.1, nb_iter=3, nb_sample=4, generator=torch.Generator().manual_seed(9))(inputs)
    generator = torch.Generator().manual_seed(9)
    single = SPSACleverhans(model, eps=0.1, nb_iter=3, nb_sample=4, generator=generator)
    one_by_one = torch.cat([single(inputs[i:i + 1], predictions[i:i + 1]) for i in range(len(inputs))])
    assert torch.equal(batch, one_by_one)


def test_zero_budget_returns_the_inputs_and_draws_nothing():
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    inputs = small_batch()
    out = SPSACleverhans(linear_model(), eps=0, generator=generator)(inputs, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(out, inputs)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("settings", [
    dict(eps=-0.1), dict(eps=math.inf), dict(eps=0.1, nb_iter=0), dict(eps=0.1, nb_sample=0),
    dict(eps=0.1, spsa_iters=1.5), dict(eps=0.1, delta=0), dict(eps=0.1, lr=-1), dict(eps=0.1, max_batch_size=0),
    dict(eps=True),
])
def test_bad_settings_are_one_line_errors(settings):
    with pytest.raises(EllbenchError, match=ATTACK_NAME):
        SPSACleverhans(linear_model(), **settings)


def test_label_count_must_match():
    with pytest.raises(EllbenchError, match="4 inputs need 4 labels"):
        SPSACleverhans(linear_model(), eps=0.1)(small_batch(), torch.tensor([0, 1]))
