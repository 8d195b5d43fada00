"""Efficiency profiling: throughput, latency, peak memory, FLOPs and parameters of one model.

Timing follows timm's benchmark.py: random input made once, inference under ``torch.inference_mode`` (and
autocast when AMP is on), warm-up steps, then timed steps whose clock stops after a device synchronisation.
On top of timm it repeats the timed run and reports median and spread, times batch-1 latency call by call
(median and p90), and measures peak memory, the bytes of live tensors at the busiest moment of one forward pass
(``peak_memory_mib``; weights + input + activations at the profiled batch size):
  - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before
    the model was moved to the GPU;
  - CPU: weights and input from their tensors, plus the highest total that torch's CPU allocator held during one
    forward pass above the total before it, from torch's profiler (``profile_memory=True``). It does not vary
    between identical runs.
On CPU, peak resident memory is a secondary figure (``peak_rss_mib``): VmHWM of a fresh child process
(``python -m ellbench.profile``) minus its RSS after imports. It also counts what the C library keeps or maps afresh,
which depends on the process's history, so it moves by 10% or more between identical runs.

FLOPs are counted with ``torch.utils.flop_counter`` on one image in float32 on the CPU. Torch's counter gives
the CPU fused attention kernel 0 FLOPs (pytorch issue #195460) while it counts explicit matmuls, which would bias
any comparison against attentions that cannot use the fused kernel. We register the two-matmul count for the fused
kernels (and count a query-key cdist as the Q K^T matmul it replaces), so fused and explicit attention count
identically (see ATTENTION_COUNTING).
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import timm
import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile
from torch.utils.flop_counter import FlopCounterMode

from ellbench._version import __version__
from ellbench.errors import EllbenchError
from ellbench.models.factory import family_of
from ellbench.models.loading import load_model

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

ATTENTION_COUNTING = (
    "FLOPs = 2 x multiply-accumulates of matmul/linear/conv ops (torch.utils.flop_counter), forward pass, per image; "
    "attention counts its two matmuls QK^T and AV (2*N*N*D_h FLOPs each per head) whether it runs fused "
    "(scaled_dot_product_attention) or as explicit matmuls, and a query-key cdist (kernel attentions) counts as the "
    "Q K^T matmul it replaces; softmax, scaling, norms and activations are not counted"
)

MIB = 2**20


# ----------------------------------------------------------------------------------------------- FLOPs and params


def _fused_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V as two batched matmuls: [B,H,Nq,D] x [B,H,D,Nk] and [B,H,Nq,Nk] x [B,H,Nk,Dv]."""
    batch, heads, query_len, head_dim = query_shape
    key_len, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * query_len * key_len * (head_dim + value_dim)


def _pairwise_distance_flops(x1_shape, x2_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of cdist(x1 [..., P, M], x2 [..., R, M]) counted as the matmul x1 x2^T it reduces to for p=2."""
    *batch, rows, features = x1_shape
    batch_size = 1
    for size in batch:
        batch_size *= size
    return 2 * batch_size * rows * x2_shape[-2] * features


def _uncounted_ops() -> dict:
    """Formulas for ops that torch's counter leaves at 0 (its CUDA attention kernels are registered already).

    The CPU fused attention kernel (pytorch #195460) and cdist, which kernel attentions (KDE, RKDE, MoM) use for
    their query-key distances in place of Q K^T: both are counted as the matmuls they stand for.
    """
    formulas = {
        "_scaled_dot_product_flash_attention_for_cpu": _fused_attention_flops,
        "_scaled_dot_product_fused_attention_overrideable": _fused_attention_flops,
        "cdist": _pairwise_distance_flops,
        "_cdist_forward": _pairwise_distance_flops,
        "_euclidean_dist": _pairwise_distance_flops,
    }
    aten = torch.ops.aten
    return {getattr(aten, name): formula for name, formula in formulas.items() if hasattr(aten, name)}


def count_flops(model: nn.Module, images: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of `model` on `images` and their split by operator, attention counted as in ATTENTION_COUNTING."""
    counter = FlopCounterMode(display=False, custom_mapping=_uncounted_ops())
    with torch.inference_mode(), counter:
        model(images)
    by_op = {str(op).removeprefix("aten."): int(flops) for op, flops in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), by_op


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once, as nn.Module.parameters() yields them)."""
    return sum(parameter.numel() for parameter in model.parameters())


# ------------------------------------------------------------------------------------------------ fused attention


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch timm's fused attention (module attribute `fused_attn`) on or off; returns how many modules have it."""
    modules = [module for module in model.modules() if hasattr(module, "fused_attn")]
    for module in modules:
        module.fused_attn = enabled
    return len(modules)


def fused_attention_state(model: nn.Module) -> str:
    """'on', 'off' or 'mixed' from the modules' `fused_attn` flags; 'n/a' when no module has one."""
    flags = {bool(module.fused_attn) for module in model.modules() if hasattr(module, "fused_attn")}
    if not flags:
        return "n/a"
    if len(flags) == 2:
        return "mixed"
    return "on" if flags.pop() else "off"


# ----------------------------------------------------------------------------------------------------- settings


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' as a torch.device (ellbench.models.loading.resolve_device checks it)."""
    from ellbench.models.loading import resolve_device as check_device

    if device == "auto":
        raise EllbenchError("profile needs a device named outright: cpu, cuda or cuda:N")
    return torch.device(check_device(device))


def _check_settings(batch_size, img_size, amp, threads, repeats, warmup, steps, latency_steps) -> None:
    if amp not in AMP_DTYPES:
        raise EllbenchError(f"unknown --amp '{amp}' (use one of: {', '.join(AMP_DTYPES)})")
    positive = {"batch size": batch_size, "repeats": repeats, "steps": steps, "latency steps": latency_steps}
    if img_size is not None:
        positive["image size"] = img_size
    if threads is not None:
        positive["threads"] = threads
    for label, value in positive.items():
        if value < 1:
            raise EllbenchError(f"{label} must be at least 1, got {value}")
    if warmup < 0:
        raise EllbenchError(f"warm-up steps must be 0 or more, got {warmup}")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def device_name(device: torch.device) -> str:
    """Human-readable name of the GPU or CPU that runs the profile."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------------- the model


def build_profiled_model(
    name: str, *, img_size: int | None = None, num_classes: int | None = None, checkpoint=None, seed: int = 0
) -> nn.Module:
    """The raw timm network of `name` in eval mode (normalisation wrapper left out, as timm's benchmark does)."""
    return load_model(name, checkpoint, img_size=img_size, num_classes=num_classes, seed=seed).model.eval()


def model_image_size(model: nn.Module, img_size: int | None) -> int:
    """The square input side the profile uses: the requested one, else the model's configured input size."""
    if img_size is not None:
        return img_size
    return int(timm.data.resolve_model_data_config(model)["input_size"][-1])


def check_takes(model: nn.Module, side: int, name: str) -> None:
    """One blank image through the model before anything is timed: a size it cannot take is one line naming a fix."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
    except (RuntimeError, AssertionError, ValueError) as error:
        if isinstance(error, torch.OutOfMemoryError):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        hint = f"; choose an --img-size that is a multiple of its patch size {patch[0]}" \
            if isinstance(patch, tuple | list) and patch else "; choose another --img-size"
        raise EllbenchError(f"{name} cannot take {side}x{side} images: {first}{hint}") from None


def random_images(batch_size: int, img_size: int, seed: int) -> torch.Tensor:
    """Uniform [0, 1] images [B,3,S,S] from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, img_size, img_size, generator=generator)


# ------------------------------------------------------------------------------------------------------- timing


def measure_throughput(
    model: Callable, images: torch.Tensor, *, warmup: int = 10, steps: int = 40, repeats: int = 3, amp: str = "off"
) -> dict:
    """Images per second at the batch size of `images`, like timm's benchmark, repeated `repeats` times.

    Each repeat times `steps` forward passes between two synchronised clock readings; the warm-up runs once.
    """
    device = images.device
    synchronize = _synchronizer(device)
    batch_size = images.shape[0]
    runs = []
    with torch.inference_mode(), _autocast(device, amp):
        for _ in range(warmup):
            model(images)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                model(images)
            synchronize()
            runs.append(steps * batch_size / (time.perf_counter() - start))
    median = statistics.median(runs)
    return {
        "throughput_img_s": median,
        "throughput_min_img_s": min(runs),
        "throughput_max_img_s": max(runs),
        "throughput_spread_pct": 100.0 * (max(runs) - min(runs)) / median,
        "throughput_runs_img_s": runs,
        "step_time_ms": 1000.0 * batch_size / median,
    }


def measure_latency(model: Callable, image: torch.Tensor, *, warmup: int = 10, steps: int = 50, amp: str = "off"):
    """Milliseconds per call at batch 1, each call timed on its own after a synchronisation: median and p90."""
    device = image.device
    synchronize = _synchronizer(device)
    times_ms = []
    with torch.inference_mode(), _autocast(device, amp):
        for _ in range(warmup):
            model(image)
        for _ in range(steps):
            synchronize()
            start = time.perf_counter()
            model(image)
            synchronize()
            times_ms.append(1000.0 * (time.perf_counter() - start))
    p90 = statistics.quantiles(times_ms, n=10, method="inclusive")[-1] if len(times_ms) > 1 else times_ms[0]
    return {"latency_ms_median": statistics.median(times_ms), "latency_ms_p90": p90, "latency_steps": len(times_ms)}


# ------------------------------------------------------------------------------------------------------- memory


def _proc_status_bytes(field: str) -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _resident_bytes() -> int:
    resident = _proc_status_bytes("VmRSS")
    return resident if resident is not None else _peak_resident_bytes()


def _peak_resident_bytes() -> int:
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss if sys.platform == "darwin" else max_rss * 1024


def _reset_peak_resident() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _load_kernels(device: torch.device, amp: str) -> None:
    """Run the op kinds of a vision transformer on tiny tensors, so their library code is resident at the baseline."""
    x = torch.rand(2, 3, 16, 16, device=device)
    weight = torch.rand(8, 3, 4, 4, device=device)
    with torch.inference_mode(), _autocast(device, amp):
        tokens = nn.functional.conv2d(x, weight, stride=4).flatten(2).transpose(1, 2)  # [2,16,8]
        tokens = nn.functional.layer_norm(tokens, (8,))
        tokens = nn.functional.gelu(nn.functional.linear(tokens, torch.rand(8, 8, device=device)))
        heads = tokens.reshape(2, 16, 2, 4).transpose(1, 2)  # [2,2,16,4]
        nn.functional.scaled_dot_product_attention(heads, heads, heads)
        (heads @ heads.transpose(-2, -1)).softmax(-1) @ heads


def measure_cpu_rss_here(settings: dict) -> dict:
    """Peak RSS of this process over building the model and two forward passes, minus the RSS after imports.

    Meant to run in a fresh process (see measure_cpu_rss); `settings` holds the profile_model arguments.
    """
    device = torch.device("cpu")
    with torch_threads(settings["threads"]):
        _load_kernels(device, settings["amp"])
        gc.collect()
        baseline = _resident_bytes()
        build = {key: settings[key] for key in ("name", "img_size", "num_classes", "checkpoint", "seed")}
        model = build_profiled_model(**build)
        if settings["fused_attn"] is not None:
            set_fused_attention(model, settings["fused_attn"])
        images = random_images(settings["batch_size"], model_image_size(model, settings["img_size"]), settings["seed"])
        model_bytes = _resident_bytes() - baseline
        forward = torch.compile(model, dynamic=False) if settings["compile"] else model
        # Building the model can leave a transient peak (initialisers); what we want is the forward pass's.
        peak_was_reset = _reset_peak_resident()
        with torch.inference_mode(), _autocast(device, settings["amp"]):
            for _ in range(2):
                forward(images)
        peak = _peak_resident_bytes()
    method = "peak RSS (VmHWM) of a fresh child process minus its RSS after imports"
    if not peak_was_reset:
        method += "; the peak could not be reset after building, so it may include initialisation"
    return {"peak_rss_mib": (peak - baseline) / MIB, "model_rss_mib": model_bytes / MIB, "rss_method": method}


def measure_cpu_rss(settings: dict, timeout_s: float = 1800.0) -> dict:
    """Run measure_cpu_rss_here in a fresh `python -m ellbench.profile --rss-child` process."""
    command = [sys.executable, "-m", "ellbench.profile", "--rss-child", json.dumps(settings)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=environment, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise EllbenchError(f"memory measurement of {settings['name']} took more than {timeout_s:.0f} s") from error
    if finished.returncode != 0:
        last_line = (finished.stderr.strip().splitlines() or ["no error output"])[-1]
        raise EllbenchError(f"memory measurement of {settings['name']} failed: {last_line}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def tensor_bytes(tensors) -> int:
    """Bytes of the storages behind `tensors`, each storage counted once (shared weights, views)."""
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(storages.values())


def _allocator_peak_bytes(prof) -> int:
    """Highest total held by torch's CPU allocator during a profiled run, above the total when the run began.

    Every allocation and free event of the profiler carries the allocator's running total after it (the field behind
    torch.profiler's memory timeline); the total before the first event is that event's total less its size.
    """
    events, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.typed[1].device.type == "cpu":
            events.append((event.start_time_ns, event.typed[1].alloc_size, event.typed[1].total_allocated))
    if not events:
        return 0
    _, first_size, first_total = min(events)
    return max(total for _, _, total in events) - (first_total - first_size)


def measure_cpu_memory(model: Callable, images: torch.Tensor, amp: str, weights: nn.Module | None = None) -> dict:
    """Peak bytes of live CPU tensors during one forward pass: weights + input + the activations alive at the peak.

    The CPU counterpart of measure_cuda_memory. Activations: the allocator's peak total above its total before the
    pass (torch profiler, profile_memory=True), after one unprofiled pass so that lazy initialisation stays out.
    Like CUDA's max_memory_allocated it counts every block torch allocates, kernels' scratch included (CUDA rounds
    blocks up to 512 bytes; this is exact), and nothing the C library keeps or maps on the side. `weights` is the
    module whose parameters and buffers are counted, when `model` is a compiled wrapper of it.
    """
    weights = weights if weights is not None else model
    with torch.inference_mode():
        with _autocast(images.device, amp):
            model(images)
        # Kineto, under torch's profiler, logs to stderr at every start (USDT lines, and on a machine without a GPU an
        # "ERROR ... gpuGetDeviceCount failed" that is not one); level 6 is above all of them. A user's setting wins.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        # A fresh autocast context, as in measure_cuda_memory: the low-precision copies of the weights that autocast
        # caches within one context are made, and counted, during the profiled pass.
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with _autocast(images.device, amp):
                model(images)
    weight_bytes = tensor_bytes([*weights.parameters(), *weights.buffers()])
    input_bytes = tensor_bytes([images])
    activation_bytes = _allocator_peak_bytes(prof)
    return {
        "peak_memory_mib": (weight_bytes + input_bytes + activation_bytes) / MIB,
        "model_memory_mib": weight_bytes / MIB,
        "input_memory_mib": input_bytes / MIB,
        "activation_memory_mib": activation_bytes / MIB,
        "memory_method": "bytes of live tensors at the peak of one forward pass: parameters, buffers and input, plus "
        "the highest total of torch's CPU allocator during the pass above its total before (torch.profiler, "
        "profile_memory=True)",
    }


def measure_cuda_memory(model: Callable, images: torch.Tensor, allocated_before_model: int, amp: str) -> dict:
    """Peak CUDA memory of one forward pass: max_memory_allocated after a reset, minus what preceded the model."""
    device = images.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), _autocast(device, amp):
        model(images)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "peak_memory_mib": (peak - allocated_before_model) / MIB,
        "memory_method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus allocations before "
        "the model moved to the GPU",
    }


# ------------------------------------------------------------------------------------------------ the one entry


def profile_model(
    name: str,
    *,
    batch_size: int = 64,
    img_size: int | None = None,
    device: str = "cpu",
    amp: str = "off",
    compile: bool = False,
    threads: int | None = None,
    repeats: int = 3,
    warmup: int = 10,
    steps: int = 40,
    latency_steps: int = 50,
    fused_attn: bool | None = None,
    measure_memory: bool = True,
    measure_rss: bool = True,
    num_classes: int | None = None,
    checkpoint=None,
    seed: int = 0,
) -> dict:
    """Profile one registered model: throughput at `batch_size`, batch-1 latency, peak memory, FLOPs, parameters.

    `fused_attn` None keeps each model's own setting (timm's default is fused); True/False forces it where a
    module has timm's `fused_attn` flag. `measure_memory` measures `peak_memory_mib` (live tensors; see the module
    docstring); on CPU `measure_rss` adds `peak_rss_mib` from a fresh child process (seconds more per model). The
    returned dict is flat and JSON-able, with every setting recorded.
    """
    _check_settings(batch_size, img_size, amp, threads, repeats, warmup, steps, latency_steps)
    torch_device = resolve_device(device)
    build = dict(name=name, img_size=img_size, num_classes=num_classes, checkpoint=checkpoint, seed=seed)
    with torch_threads(threads):
        model = build_profiled_model(**build)
        if fused_attn is not None:
            set_fused_attention(model, fused_attn)
        side = model_image_size(model, img_size)
        check_takes(model, side, name)
        result = _describe(model, build, side, torch_device, amp, compile, batch_size)
        result |= dict(warmup=warmup, steps=steps, repeats=repeats)
        allocated_before_model = torch.cuda.memory_allocated(torch_device) if torch_device.type == "cuda" else 0
        model = model.to(torch_device)
        forward = torch.compile(model, dynamic=False) if compile else model
        images = random_images(batch_size, side, seed).to(torch_device)
        result |= measure_throughput(forward, images, warmup=warmup, steps=steps, repeats=repeats, amp=amp)
        result |= measure_latency(forward, images[:1], warmup=warmup, steps=latency_steps, amp=amp)
        if measure_memory and torch_device.type == "cuda":
            result |= measure_cuda_memory(forward, images, allocated_before_model, amp)
            result["model_memory_mib"] = tensor_bytes([*model.parameters(), *model.buffers()]) / MIB
        if measure_memory and torch_device.type == "cpu":
            result |= measure_cpu_memory(forward, images, amp, weights=model)
        del forward, model, images
        gc.collect()
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
    if measure_memory and measure_rss and torch_device.type == "cpu":
        child = {**build, "checkpoint": None if checkpoint is None else str(checkpoint), "batch_size": batch_size,
                 "amp": amp, "compile": compile, "threads": result["threads"], "fused_attn": fused_attn}  # fmt: skip
        result |= measure_cpu_rss(child)
    return result


def _describe(model, build: dict, side: int, device: torch.device, amp: str, compile: bool, batch_size: int) -> dict:
    """Settings, environment, parameters and FLOPs of the profiled model: the untimed part of the result."""
    flops, flops_by_op = count_flops(model, random_images(1, side, build["seed"]))
    return {
        "model": build["name"],
        "family": family_of(build["name"]),
        "device": str(device),
        "device_name": device_name(device),
        "amp": amp,
        "dtype": "float32" if amp == "off" else f"float32 weights, {amp} autocast",
        "compile": compile,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "img_size": side,
        "num_classes": model.num_classes if hasattr(model, "num_classes") else None,
        "checkpoint": None if build["checkpoint"] is None else str(build["checkpoint"]),
        "seed": build["seed"],
        "fused_attention": fused_attention_state(model),
        "params": count_parameters(model),
        "flops_per_image": flops,
        "gflops_per_image": flops / 1e9,
        "gmacs_per_image": flops / 2e9,
        "flops_by_op": flops_by_op,
        "flops_counting": ATTENTION_COUNTING,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "ellbench_version": __version__,
    }


# ----------------------------------------------------------------------------------------- python -m entry point


def main(argv: list[str] | None = None) -> int:
    """Entry of the RSS child: `python -m ellbench.profile --rss-child '<settings JSON>'` prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m ellbench.profile", description=main.__doc__)
    parser.add_argument("--rss-child", required=True, metavar="JSON", help="profile_model settings as JSON")
    arguments = parser.parse_args(argv)
    print(json.dumps(measure_cpu_rss_here(json.loads(arguments.rss_child))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
