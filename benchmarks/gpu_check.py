"""The GPU check: every CUDA path of ellbench run once on one GPU, with figures, in under 8 minutes.

Sections (each a command run in a child process, written to one Markdown file with the command beside its figures;
the file is rewritten after every section, so a run cut short still leaves what it measured):
  1. environment: GPU, driver, torch, timm, CPU cores, load;
  2. the CUDA-marked tests (`pytest -m cuda`; they skip without CUDA);
  3. `ellbench profile` of DeiT and Elliptical at tiny/small/base, bf16 AMP, batch 256: throughput, latency,
     max_memory_allocated;
  4. a generated folder of 512 photographs (benchmarks/photo_folder.py), then `ellbench eval` and the paper suite's PGD
     (`ellbench attack --attack PGD --protocol paper`, eps 1..6/255, 20 steps) at batch 256 with loader workers;
  5. images/s of single jobs timed in-process (clean eval and paper PGD-20 at eps 1/255, float32 and bf16, DeiT and
     Elliptical tiny), and the eval pipeline against timm's validate.py loop (benchmarks/eval_pipeline.py);
  6. the attack harness against bare torchattacks on the GPU (benchmarks/attack_overhead.py), float32 and bf16;
  7. torchrun with one process: the "cpu:gloo,cuda:nccl" process group ellbench uses, an NCCL all_reduce and the
     object collectives, then `ellbench attack` under torchrun.

    # on a machine with one CUDA GPU, from the repository root (ellbench importable, e.g. PYTHONPATH=$PWD)
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --out benchmarks/gpu_check.md
    # every section in miniature on the CPU (checks the script itself; figures meaningless)
    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --device cpu --dry-run --out /tmp/gpu_check.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
ELLBENCH = [PY, "-m", "ellbench"]
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
PAPER_EPS = "1/255,2/255,3/255,4/255,5/255,6/255"


def plan(args) -> dict:
    """Sizes of every section: the real check on a GPU, or a miniature of it (--dry-run)."""
    if args.dry_run:
        return dict(profile_models=["deit_tiny_patch16_224", "elliptical_tiny_patch16_224"], profile_batch=2,
                    profile_steps=["--warmup", "0", "--steps", "1", "--repeats", "1", "--latency-steps", "1",
                                   "--no-memory"],
                    images=8, batch=4, workers=2, eps=PAPER_EPS.split(",")[0], pgd_steps=1,
                    job_models=["deit_tiny_patch16_224"], overhead=["--batch-size", "4", "--batches", "1", "--repeats",
                                                                  "1"],
                    pipeline=["--batch-size", "4", "--rounds", "1", "--threads", "1"], torchrun_limit=4)
    workers = args.workers or min(16, os.cpu_count() or 1)
    return dict(profile_models=[f"{family}_{size}_patch16_224" for size in ("tiny", "small", "base")
                                for family in ("deit", "elliptical")],
                profile_batch=256, profile_steps=["--warmup", "5", "--steps", "20", "--repeats", "3",
                                                  "--latency-steps", "30"],
                images=512, batch=256, workers=workers, eps=PAPER_EPS, pgd_steps=20,
                job_models=["deit_tiny_patch16_224", "elliptical_tiny_patch16_224"],
                overhead=["--model", "deit_tiny_patch16_224", "--batch-size", "128", "--batches", "2", "--repeats",
                          "3"],
                pipeline=["--batch-size", "256", "--rounds", "2", "--workers", str(workers)], torchrun_limit=256)


class Report:
    """The Markdown file: sections appended as they finish, the whole file rewritten each time."""

    def __init__(self, path: Path, header: str):
        self.path, self.parts, self.summary = path, [header], []

    def add(self, title: str, seconds: float, status: str, body: str) -> None:
        self.parts.append(f"## {title}\n\n{body.rstrip()}\n")
        self.summary.append((title, status, seconds))
        rows = "\n".join(f"| {t} | {s} | {sec:.0f} |" for t, s, sec in self.summary)
        text = "\n".join(self.parts) + f"\n## Summary\n\n| section | status | seconds |\n|---|---|---|\n{rows}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text, encoding="utf-8")


def shown(command: list[str]) -> str:
    """A command as a reader would type it: `python` for this interpreter, paths relative to the repository."""
    words = ["python" if word == PY else word for word in command]
    return " ".join(shlex.quote(word.replace(str(ROOT) + "/", "")) for word in words)


def run(command: list[str], timeout: float, env: dict) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, seconds) of a child process; 124 when it ran out of time."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, timeout), env=env, cwd=ROOT,
                              check=False)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        code = 124
        output = ((stopped.stdout or b"").decode(errors="replace") if isinstance(stopped.stdout, bytes)
                  else (stopped.stdout or "")) + "\n[stopped: out of time]"
    return code, output, time.perf_counter() - start


def block(text: str, lines: int = 40) -> str:
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"```\n{tail}\n```\n"


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(no rows)\n"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |\n" for row in rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def first_json(text: str):
    """The JSON document a `--json` command printed (stdout may be preceded by notes)."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text[start:])[0]


# ---------------------------------------------------------------------------------------------------------------
# Parts that run inside a child process (`gpu_check.py --part NAME`), printing JSON.


def part_environment(args) -> dict:
    import timm
    import torch

    record = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
              "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count(),
              "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if Path("/dev/shm").is_dir():  # loader workers hand batches over in shared memory: a small /dev/shm fails them
        record["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                      multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version(),
                      nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None)
    for package in ("torchattacks", "imagecorruptions"):
        try:
            record[package] = __import__(package).__version__ if package == "torchattacks" else "importable"
        except ImportError as error:
            record[package] = f"MISSING ({error})"
    return record


def part_jobs(args) -> list[dict]:
    """Images/s of single jobs timed here: clean eval and paper PGD, float32 and bf16, one fresh store per job."""
    import torch

    from ellbench.attacks.suite import make_entries
    from ellbench.data import open_dataset
    from ellbench.models.loading import load_for_eval
    from ellbench.runner import LoaderPool
    from ellbench.store import Store
    from ellbench.tasks.attack import run_attack_suite
    from ellbench.tasks.eval import run_clean

    cuda = args.device.startswith("cuda")
    dataset = open_dataset(str(args.folder))
    (pgd,) = make_entries("PGD", {"alpha": 0.15 / 255, "steps": args.pgd_steps, "random_start": True},
                          protocol="paper", eps=1 / 255)
    rows = []
    with tempfile.TemporaryDirectory() as scratch, LoaderPool() as loaders:
        for model in args.models:
            for amp in ("off", "bf16"):
                loaded = load_for_eval(model, dataset=dataset, seed=0, device=args.device, amp=amp)
                jobs = {
                    "clean eval": lambda store, loaded=loaded: run_clean(
                        store, loaded, dataset, batch_size=args.batch_size, workers=args.workers, loaders=loaders,
                        progress=False),
                    f"paper PGD-{args.pgd_steps} eps 1/255": lambda store, loaded=loaded: run_attack_suite(
                        store, loaded, dataset, [pgd], batch_size=args.batch_size, workers=args.workers,
                        loaders=loaders, progress=False)["jobs"][0],
                }
                for name, job in jobs.items():
                    job(Store(Path(scratch) / f"warm-{model}-{amp}-{len(rows)}.sqlite"))  # kernels, workers: untimed
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    result = job(Store(Path(scratch) / f"{model}-{amp}-{len(rows)}.sqlite"))
                    if cuda:
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                    summary = result["summary"]
                    rows.append({"model": model, "amp": amp, "job": name, "images": summary["n"],
                                 "seconds": seconds, "images_per_s": summary["n"] / seconds,
                                 "accuracy": summary.get("robust_accuracy", summary.get("accuracy")),
                                 "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda
                                 else None,
                                 "loader_workers": result["provenance"]["loader_workers"]})
    return rows


def part_nccl(args) -> dict:
    """Under torchrun: ellbench's process group ("cpu:gloo,cuda:nccl" with CUDA), an NCCL all_reduce on the GPU and
    the object collectives ellbench's runner uses (over gloo)."""
    import torch
    import torch.distributed as dist

    from ellbench import distributed

    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = distributed.backend_for(cuda)
    dist.init_process_group(backend=backend, timeout=distributed.collective_timeout())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    tensor = torch.arange(4, dtype=torch.float32, device=device) + dist.get_rank()
    dist.all_reduce(tensor)  # NCCL on a CUDA tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    rows = [None] * dist.get_world_size()
    dist.gather_object({"rank": dist.get_rank(), "rows": [1, 2, 3]}, rows, dst=0)  # what gather_to_writer does
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, ("data", 512))  # what check_same does
    holder = ["from rank 0"]
    dist.broadcast_object_list(holder, src=0)  # what broadcast_object does
    dist.barrier()
    record = {"backend": backend, "world_size": dist.get_world_size(), "tensor_device": str(tensor.device),
              "all_reduce": tensor.tolist(), "all_gather": [t.tolist() for t in gathered], "gather_object": rows,
              "all_gather_object": seen, "broadcast_object": holder[0],
              "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None}
    dist.destroy_process_group()
    return record


PARTS = {"environment": part_environment, "jobs": part_jobs, "nccl": part_nccl}


# ---------------------------------------------------------------------------------------------------------------
# The sections, run from the parent.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the dry run")
    parser.add_argument("--out", type=Path, default=HERE / "gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="Every section in miniature (for a CPU machine)")
    parser.add_argument("--workers", type=int, default=None, help="Loader workers (default: cores, at most 16)")
    parser.add_argument("--budget-s", type=float, default=450, help="Sections not started by then are skipped")
    parser.add_argument("--skip", default="", help="Comma-separated section numbers to leave out, e.g. 2,6")
    parser.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pgd-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args), default=str))
        return
    check(args)


def check(args) -> None:
    sizes = plan(args)
    started = time.perf_counter()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    device, workers, batch = args.device, str(sizes["workers"]), str(sizes["batch"])
    mode = "DRY RUN on the CPU: every section in miniature; the figures mean nothing" if args.dry_run else \
        f"device {device}"
    report = Report(args.out, f"# GPU check\n\n{mode}. Command: `{shown([PY, *sys.argv])}`\n")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    def remaining() -> float:
        return args.budget_s - (time.perf_counter() - started)

    def section(number: str, title: str, command: list[str], limit: float, render) -> None:
        name = f"{number}. {title}"
        if number in skip:
            report.add(name, 0.0, "skipped (--skip)", "")
            return
        if remaining() < 10:
            report.add(name, 0.0, "skipped (out of time budget)", f"Command: `{shown(command)}`\n")
            return
        code, output, seconds = run(command, min(limit, remaining()), env)
        status = "ok" if code == 0 else ("out of time" if code == 124 else f"failed (exit {code})")
        try:
            body = render(output) if code == 0 else block(output)
        except (ValueError, KeyError, TypeError) as error:
            status, body = f"unreadable output ({error})", block(output)
        report.add(name, seconds, status, f"Command ({seconds:.0f} s):\n\n```\n{shown(command)}\n```\n\n{body}")
        print(f"{name}: {status} ({seconds:.0f} s)", flush=True)

    me = [PY, str(Path(__file__).resolve())]
    section("1", "environment", [*me, "--part", "environment", "--device", device], 120,
            lambda out: table([first_json(out)], list(first_json(out))))
    section("2", "CUDA-marked tests", [PY, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                                       "tests"], 150, lambda out: block(out, 25))

    profile_out = scratch / "profile"
    section("3", f"profile, bf16 autocast, batch {sizes['profile_batch']}",
            [*ELLBENCH, "profile", *sizes["profile_models"], "--device", device, "--amp", "bf16", "--batch-size",
             str(sizes["profile_batch"]), *sizes["profile_steps"], "--json", "--out", str(profile_out)], 240,
            lambda out: table(first_json(out), ["model", "amp", "batch_size", "throughput_img_s",
                                                "latency_ms_median", "latency_ms_p90", "peak_memory_mib",
                                                "gflops_per_image", "params", "device_name"]))

    sys.path.insert(0, str(HERE))
    from photo_folder import make_photo_folder

    folder = make_photo_folder(scratch / "photos", sizes["images"])
    eval_out, model = scratch / "eval", "deit_tiny_patch16_224"
    section("4a", f"ellbench eval, {sizes['images']} photographs, batch {batch}, {workers} workers, bf16",
            [*ELLBENCH, "eval", model, "--data", str(folder), "--batch-size", batch, "--workers", workers,
             "--amp", "bf16", "--device", device, "--json", "--out", str(eval_out)], 120, lambda out: block(out, 30))
    section("4b", f"ellbench attack: the paper suite's PGD (eps {sizes['eps']}, {sizes['pgd_steps']} steps), batch "
                  f"{batch}, {workers} workers, bf16",
            [*ELLBENCH, "attack", model, "--data", str(folder), "--batch-size", batch, "--workers", workers,
             "--amp", "bf16", "--device", device, "--attack", "PGD", "--protocol", "paper", "--param",
             f"eps={sizes['eps']}", "--param", f"steps={sizes['pgd_steps']}", "--param", "alpha=0.15*eps", "--param",
             "random_start=true", "--json", "--out", str(eval_out)], 180,
            lambda out: table(first_json(out)["results"], ["attack", "protocol", "eps", "accuracy", "n"]))
    section("5a", "images/s of single jobs (timed in-process, fresh store, after an untimed warm-up job)",
            [*me, "--part", "jobs", "--device", device, "--folder", str(folder), "--models", *sizes["job_models"],
             "--batch-size", batch, "--workers", workers, "--pgd-steps", str(sizes["pgd_steps"])], 180,
            lambda out: table(first_json(out), ["model", "amp", "job", "images", "seconds", "images_per_s",
                                                "accuracy", "max_memory_allocated_mib", "loader_workers"]))
    section("5b", "eval pipeline against timm's validate.py loop (float32)",
            [PY, str(HERE / "eval_pipeline.py"), "--device", device, "--folder", str(folder), *sizes["pipeline"]],
            150, lambda out: block(out, 40))
    for amp in ("off", "bf16"):
        section(f"6{'a' if amp == 'off' else 'b'}", f"attack harness vs bare torchattacks (PGD-10), amp {amp}",
                [PY, str(HERE / "attack_overhead.py"), "--device", device, *sizes["overhead"], "--amp", amp], 120,
                lambda out: block(out, 10))
    section("7a", "torchrun, 1 process: ellbench's process group, NCCL all_reduce, object collectives",
            [*TORCHRUN, str(Path(__file__).resolve()), "--part", "nccl", "--device", device], 120,
            lambda out: table([first_json(out)], list(first_json(out))))
    section("7b", "torchrun, 1 process: ellbench attack (FGSM)",
            [*TORCHRUN, "-m", "ellbench", "attack", model, "--data", str(folder), "--limit",
             str(sizes["torchrun_limit"]), "--batch-size", str(min(64, sizes["batch"])), "--workers", workers,
             "--attack", "FGSM", "--param", "eps=1/255", "--device", device, "--json", "--out",
             str(scratch / "torchrun")], 120,
            lambda out: table(first_json(out)["results"], ["attack", "protocol", "eps", "accuracy", "n"]))
    total = time.perf_counter() - started
    print(f"wrote {args.out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
