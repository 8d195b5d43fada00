"""SPSA as cleverhans' torch `spsa` runs it: the attack behind the Elliptical Attention paper's SPSA numbers.

The official evaluation (stefvk/Elliptical-Attention, ImageAttack/engine.py) calls `spsa(model, x, eps, 40)` from a
copy of cleverhans-lab/cleverhans, cleverhans/torch/attacks/spsa.py, on mean/std-normalised images z with cleverhans'
defaults. That function differs from the SPSA of its reference (Uesato et al. 2018, arXiv:1802.05666) and from
torchattacks' `SPSA` in one place:

- `spsa` builds `loss_fn(pert) = margin loss of model(x + pert)`, and `_compute_spsa_gradient(loss_fn, x, ...)`
  calls it on `x + delta_x`. The model therefore sees `x + (x + delta_x) = 2x + delta_x`: every gradient estimate
  is taken around twice the clean input, and never around the current iterate x + perturbation.

Adam then follows, for all its steps, fresh noisy estimates of the gradient at the fixed point 2x, so the attack is
weaker than a correct SPSA (and, in the official logs, weaker than FGSM). `SPSACleverhans` reproduces that
computation exactly, step for step and draw for draw:

- one image at a time (cleverhans splits a batch into single images), each with its own Adam optimiser;
- a uniform random start in [-eps, eps] (one draw of the image's shape), then the L-inf projection;
- per step and per SPSA round, one uniform draw of shape [nb_sample, C, H, W] turned into directions
  delta * sign(u - 0.5) (Rademacher; a draw of exactly 0.5 gives a zero coordinate), used as +/- pairs: the model is
  evaluated on 2 * nb_sample points 2x +/- delta * sign(...);
- the loss is minus the margin (largest logit of any other class minus the label's logit), so lowering it pushes the
  image across the decision boundary; the estimate is the mean over the 2 * nb_sample points of
  loss * sign(direction), divided by delta, averaged over the SPSA rounds;
- torch.optim.Adam (lr, default betas and epsilon) takes one step with that estimate as the perturbation's gradient,
  and the perturbation is projected back to [-eps, eps]. Projection is written, as in cleverhans, as the difference
  between the projected image and the clean image, which rounds the perturbation to the image's float grid;
- no clipping to an input range (the official run passes none: its clip bounds are -inf and +inf), no early stop.

cleverhans also runs one more forward pass per step, on x + perturbation, only to print or early-stop on the loss;
it cannot change the result with a deterministic model and is left out here. The random draws come from the
generator given (or torch's global generator on the inputs' device), in cleverhans' order, so with the same random
state the output equals cleverhans' bit for bit (checked in tests/test_spsa_cleverhans.py when cleverhans is
installed). This module is written from that description; it shares no code with cleverhans.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ellbench.errors import EllbenchError

ATTACK_NAME = "SPSA-cleverhans"
CLASS_NAME = "SPSACleverhans"  # what ellbench.attacks.suite.attack_class returns for ATTACK_NAME
# What this class reproduces, for job keys: results change if this does.
REPRODUCES = "cleverhans 4.0.0 cleverhans/torch/attacks/spsa.py spsa(norm=inf, clip_min=-inf, clip_max=inf, y=labels)"


def margin_logit_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the largest logit of any class other than the label, minus the label's logit (> 0: misclassified)."""
    label_logits = logits.gather(1, labels[:, None]).squeeze(1)  # [N]
    other_logits = logits.scatter(1, labels[:, None], float("-inf"))  # [N, classes]
    return other_logits.amax(1) - label_logits


class SPSACleverhans:
    """SPSA with cleverhans' quirk: L-inf, Adam on the perturbation, gradient estimated around 2x, never clipped.

    `model` maps the attacked inputs (for the paper protocol: the normalised images z) to logits; it is used as given,
    so put it in eval mode first. `atk(inputs, labels)` returns adversarial inputs with |adv - inputs| <= eps; labels
    default to the model's predictions, as in cleverhans. Settings keep cleverhans' meaning:

    - eps: L-inf budget in the inputs' units; 0 returns the inputs and draws nothing.
    - nb_iter: Adam steps (the official run: 40). lr: Adam's learning rate (cleverhans' learning_rate, 0.01).
    - delta: finite-difference size (0.01). nb_sample: random +/- direction pairs per estimate (spsa_samples, 128).
    - spsa_iters: estimates averaged per step (1).
    - max_batch_size: at most this many points per forward pass (default: all 2 * nb_sample at once, as cleverhans).
      It changes memory only: the draws and the arithmetic are the same (the model's own kernels may round
      differently at another batch size).
    - generator: a torch.Generator on the inputs' device; None uses torch's global generator for that device.
    """

    name = ATTACK_NAME

    def __init__(self, model: nn.Module, eps: float, nb_iter: int = 40, lr: float = 0.01, delta: float = 0.01,
                 nb_sample: int = 128, spsa_iters: int = 1, max_batch_size: int | None = None,
                 generator: torch.Generator | None = None):
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps < 0:
            raise EllbenchError(f"{ATTACK_NAME}: eps must be a finite number >= 0, got {eps!r}")
        for setting, value in (("lr", lr), ("delta", delta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise EllbenchError(f"{ATTACK_NAME}: {setting} must be a finite number > 0, got {value!r}")
        counts = {"nb_iter": nb_iter, "nb_sample": nb_sample, "spsa_iters": spsa_iters}
        if max_batch_size is not None:
            counts["max_batch_size"] = max_batch_size
        for setting, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EllbenchError(f"{ATTACK_NAME}: {setting} must be a whole number >= 1, got {value!r}")
        self.model = model
        self.eps = float(eps)
        self.nb_iter = nb_iter
        self.lr = float(lr)
        self.delta = float(delta)
        self.nb_sample = nb_sample
        self.spsa_iters = spsa_iters
        self.max_batch_size = max_batch_size
        self.generator = generator

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, nb_iter={self.nb_iter}, lr={self.lr}, delta={self.delta}, "
                f"nb_sample={self.nb_sample}, spsa_iters={self.spsa_iters}, max_batch_size={self.max_batch_size})")

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial inputs [B, ...] for `inputs` [B, ...], attacking `labels` [B] (default: the predictions)."""
        if inputs.ndim < 2 or len(inputs) == 0:
            raise EllbenchError(f"{ATTACK_NAME} takes a non-empty batch [B, ...], got shape {tuple(inputs.shape)}")
        inputs = inputs.detach()
        with torch.no_grad():
            if labels is None:
                labels = self.model(inputs).argmax(1)
            labels = torch.as_tensor(labels, device=inputs.device)
            if labels.shape != (len(inputs),):
                raise EllbenchError(f"{ATTACK_NAME}: {len(inputs)} inputs need {len(inputs)} labels, "
                                    f"got shape {tuple(labels.shape)}")
            return torch.cat([self.attack_one(inputs[i:i + 1], labels[i:i + 1]) for i in range(len(inputs))])

    @torch.no_grad()
    def attack_one(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The adversarial version [1, ...] of one input x [1, ...] against label [1]."""
        if self.eps == 0:
            return x.clone()
        perturbation = (self._uniform(x.shape, x) * 2 - 1) * self.eps
        self._project(perturbation, x)
        optimizer = torch.optim.Adam([perturbation], lr=self.lr)
        for _ in range(self.nb_iter):
            perturbation.grad = self.gradient_estimate(x, label)
            optimizer.step()
            self._project(perturbation, x)
        return x + perturbation

    @torch.no_grad()
    def gradient_estimate(self, x: torch.Tensor, label: torch.Tensor,
                          signs: torch.Tensor | None = None) -> torch.Tensor:
        """cleverhans' SPSA estimate [1, ...] of the gradient of the attack loss, which is taken around 2x.

        `signs` [spsa_iters * nb_sample, ...] of +-1 fixes the directions (for checking by hand); by default they are
        drawn, one [nb_sample, ...] draw per SPSA round.
        """
        rounds = []
        for r in range(self.spsa_iters):
            if signs is None:
                round_signs = torch.sign(self._uniform((self.nb_sample, *x.shape[1:]), x) - 0.5)
            else:
                round_signs = signs[r * self.nb_sample:(r + 1) * self.nb_sample].to(x)
            offsets = self.delta * round_signs
            offsets = torch.cat([offsets, -offsets])  # [2 * nb_sample, ...]: +/- pairs
            # The quirk: cleverhans hands x + offsets to a loss that adds x again, so the model sees 2x + offsets.
            losses = self._loss(x + (x + offsets), label)  # [2 * nb_sample]
            losses = losses.view(-1, *([1] * (x.ndim - 1)))
            rounds.append(torch.mean(losses * torch.sign(offsets), dim=0, keepdim=True) / self.delta)
        return torch.mean(torch.cat(rounds), dim=0, keepdim=True)

    def _loss(self, points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Minus the margin of each point [N, ...] (untargeted: Adam lowers it), in forward passes of max_batch_size."""
        chunk = self.max_batch_size or len(points)
        logits = torch.cat([self.model(part) for part in points.split(chunk)])
        return -margin_logit_loss(logits, label.expand(len(points)))

    def _project(self, perturbation: torch.Tensor, x: torch.Tensor) -> None:
        """Clamp the perturbation to [-eps, eps] in place, stored as (x + clamped) - x, rounded like cleverhans'."""
        clamped = torch.clamp(perturbation, -self.eps, self.eps)
        perturbation.add_(((x + clamped) - x) - perturbation)

    def _uniform(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, dtype=like.dtype, device=like.device, generator=self.generator)
