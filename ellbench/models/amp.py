"""Automatic mixed precision (AMP) for evaluation: the network runs under torch.autocast, its logits leave in float32.

Only the network runs in reduced precision. Its input (normalisation, and under attacks every perturbation, step and
projection) and its output stay float32, so a caller such as torchattacks computes its loss, gradients and updates in
float32 on float32 tensors; autocast decides per op inside the network (matmuls and convolutions in bf16/fp16,
reductions such as softmax and LayerNorm in float32, as torch's autocast op lists say). "off" is the reference.

fp16 has a narrow exponent range: without loss scaling, small gradients inside the network can underflow to zero,
so attacks run under fp16 may be weaker than under fp32 or bf16; bf16 keeps float32's range.
"""

from __future__ import annotations

import contextlib

from ellbench.errors import EllbenchError

AMP_MODES = ("off", "bf16", "fp16")


def check_amp(amp: str) -> str:
    """`amp` if it is off, bf16 or fp16; a user error otherwise."""
    if amp not in AMP_MODES:
        raise EllbenchError(f"unknown --amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    return amp


def amp_dtype(amp: str):
    """The torch dtype autocast runs in for `amp`, None for off."""
    import torch

    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[check_amp(amp)]


def autocast(device_type: str, amp: str):
    """torch.autocast on `device_type` ('cpu', 'cuda') in `amp`'s dtype, or a no-op context for off."""
    import torch

    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def autocast_logits(network, inputs, amp: str):
    """network(inputs) under `amp`'s autocast on the inputs' device, returned as float32 (unchanged for off)."""
    if amp == "off":
        return network(inputs)
    with autocast(inputs.device.type, amp):
        logits = network(inputs)
    return logits.float()
