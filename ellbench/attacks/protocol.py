"""The two attack protocols around torchattacks objects.

- ``standard`` (RobustBench / AutoAttack convention): the attack works on [0, 1] pixels, eps is in pixel units,
  the labels are the true labels, adversarial images are clipped to [0, 1].
- ``paper`` (the Elliptical Attention paper's evaluation, stefvk/Elliptical-Attention ImageAttack/engine.py, calling
  cleverhans): the attack works on the normalised input z = (x - mean) / std, eps is in those units, nothing is
  clipped, and the labels are the model's own clean predictions. Robust accuracy is still measured against the true
  labels.

torchattacks clamps every iterate to [0, 1]. The paper protocol therefore runs it in coordinates u with
z = offset + scale * u, where offset and scale are chosen so that every iterate around a valid image lies inside
u in [0, 1]: the clamp never binds, and the uniform budget eps / scale in u is exactly the budget eps in z. Settings
measured in input units (eps, step sizes, SPSA's delta and learning rate) are divided by scale on the way in.

Under AMP (the model's `amp`, ellbench.models.amp) only the network runs in autocast, in both protocols: its logits
come back float32, so the loss, its gradient with respect to the input, every step and projection stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable

import torch
from torch import nn

from ellbench.attacks.suite import PAPER_INPUT_UNITS, PAPER_NATIVE, AttackEntry, attack_class, construct
from ellbench.errors import EllbenchError
from ellbench.models.amp import autocast_logits


class AffineInput(nn.Module):
    """The raw network evaluated at z = offset + scale * u, so that torchattacks can attack u in [0, 1].

    z is formed in float32; the network alone runs under `amp`'s autocast, and its logits come back float32.
    """

    def __init__(self, network: nn.Module, offset: float, scale: float, amp: str = "off"):
        super().__init__()
        self.network = network
        self.offset = offset
        self.scale = scale
        self.amp = amp

    def forward(self, u):
        return autocast_logits(self.network, self.offset + self.scale * u, self.amp)


def paper_coordinates(mean, std, margin: float) -> tuple[float, float]:
    """(offset, scale) such that z = offset + scale * u maps every z within `margin` of a [0, 1] image into [0, 1].

    torchattacks clamps its iterates after projecting them to the eps ball, or after a random start of at most eps
    plus at most one step, so a margin of eps + max(eps, step) keeps the clamp from ever binding.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(std, dtype=torch.float64).flatten()
    lowest = float((-mean / std).min())
    highest = float(((1 - mean) / std).max())
    return lowest - margin, highest - lowest + 2 * margin


@dataclasses.dataclass
class AttackOutcome:
    """One attacked batch, in the protocol's space (pixels for standard, normalised z for paper)."""

    clean_pred: torch.Tensor  # [B]
    target: torch.Tensor  # [B] the labels the attack worked against
    clean_input: torch.Tensor  # [B, C, H, W] what the network's input was for the clean image
    adversarial_input: torch.Tensor  # [B, C, H, W]
    logits: torch.Tensor  # [B, classes] on the adversarial input


def make_attack(model: nn.Module, entry: AttackEntry) -> Callable:
    """attack(images in [0, 1], labels) -> AttackOutcome; `model` takes [0, 1] images and has .mean, .std, .model
    (and .amp, off when absent: the paper protocol calls the raw network under the same autocast as the model).

    No seeding here: the caller decides the random state (see ellbench.tasks.attack.attack_evaluator).
    """
    cls = attack_class(entry.attack)
    kwargs = entry.kwargs()
    if entry.attack in PAPER_NATIVE:
        # ellbench's reproduction of cleverhans' SPSA runs on z itself: its quirk (an estimate around 2z) is defined in
        # normalised units, and it never clips, so no change of coordinates is needed (or would be faithful).
        native = construct(cls, model.model, entry, kwargs)

        def run_native(images: torch.Tensor, labels: torch.Tensor) -> AttackOutcome:
            with torch.no_grad():
                clean_pred = model(images).argmax(1)
            z = (images - model.mean) / model.std
            z_adv = native(z, clean_pred)
            with torch.no_grad():
                logits = model.model(z_adv)
            return AttackOutcome(clean_pred, clean_pred, z, z_adv, logits)

        return run_native
    if entry.protocol == "paper":
        margin = entry.eps + max(entry.eps, entry.params.get("alpha", 0.0))
        offset, scale = paper_coordinates(model.mean, model.std, margin)
        # Evaluation mode: torchattacks restores the mode it found after each attack, and a training-mode wrapper
        # would switch the network's BatchNorm/dropout (RVT) to training behaviour for good.
        attacked = AffineInput(model.model, offset, scale, amp=getattr(model, "amp", "off")).eval()
        units = PAPER_INPUT_UNITS[entry.attack]
        kwargs = {k: (v / scale if k in units else v) for k, v in kwargs.items()}
    else:
        attacked = model
    attack = construct(cls, attacked, entry, kwargs)

    def run(images: torch.Tensor, labels: torch.Tensor) -> AttackOutcome:
        with torch.no_grad():
            clean_pred = model(images).argmax(1)
        if entry.protocol == "paper":
            z = (images - model.mean) / model.std
            u_adv = attack((z - offset) / scale, clean_pred)
            z_adv = offset + scale * u_adv
            with torch.no_grad():
                logits = attacked(u_adv)
            return AttackOutcome(clean_pred, clean_pred, z, z_adv, logits)
        adv = attack(images, labels)
        with torch.no_grad():
            logits = model(adv)
        return AttackOutcome(clean_pred, labels, images, adv, logits)

    return run


def batch_seed(seed: int, first_index: int) -> int:
    """The random seed of the batch starting at example `first_index`: the same batch gets the same draws on resume."""
    digest = hashlib.blake2b(f"ellbench-attack:{int(seed)}:{int(first_index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int):
    """Seed torch's global generator (and the device's) inside the block, restoring the outer state afterwards.

    torchattacks draws random starts from the global generator, so this is how a batch's draws are made repeatable
    without touching anyone else's random state.
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def check_images(images: torch.Tensor) -> None:
    """Attacks take image batches [B, C, H, W] in [0, 1]; anything else is a user error."""
    if images.ndim != 4:
        raise EllbenchError(f"attacks take image batches [B, C, H, W], got shape {tuple(images.shape)}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise EllbenchError(f"attacks take images in [0, 1]; this batch spans [{low:.3g}, {high:.3g}]")
