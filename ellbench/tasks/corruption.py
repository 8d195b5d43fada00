"""The corruption task: one clean-evaluation job per (corruption, severity) of a suite, then CE and mCE.

The data of an entry is released ImageNet-C (a folder), ImageNet-C generated from a clean folder (cached), or an
in-memory data set corrupted on the fly. Generated images are resized and cropped by the clean folder's transform (the
model's own eval transform) before the corruption; released images (224 px) are resized for a model of another size
and say so (ellbench.data.transforms.released_imagenet_c_transform).
Generated and in-memory entries are corrupted by the suite's backend (imagecorruptions or torch; `backend` overrides
it); a torch-backend job has the backend and its version in its key, so the two backends never share a job.
"""

from __future__ import annotations

from collections.abc import Iterator

from ellbench.corruptions.imagenet_c import GeneratedImageNetC, file_hashes, imagenet_c_folder
from ellbench.corruptions.images import (
    CorruptedDataset,
    backend_settings,
    backend_version,
    content_hash,
    precompute_all,
)
from ellbench.corruptions.mce import summarize_corruptions
from ellbench.corruptions.names import DEFAULT_BACKEND, check_backend
from ellbench.corruptions.suite import CorruptionSuite
from ellbench.data.folders import ImageFolderDataset
from ellbench.errors import EllbenchError
from ellbench.runner import JobSpec, job_key, provenance, run
from ellbench.tasks.eval import clean_spec, run_clean


def generation_workers(workers: int | None) -> int | None:
    """Processes generating ImageNet-C images for `workers`: None (every core) stays None, 0 means this process."""
    return None if workers is None else max(1, workers)


def corrupted_dataset(corruption: str, severity: int, *, clean=None, imagenet_c=None, seed: int = 0, cache_dir=None,
                      workers: int | None = None, skip_bad_images: bool = False, limit: int | None = None,
                      precompute: bool = False, source_hashes: list[str] | None = None, transform=None,
                      backend: str = DEFAULT_BACKEND):
    """The data set of one suite entry: released ImageNet-C if `imagenet_c` is given (read for a model whose eval
    transform is `transform`), else generated from the clean ImageNet-style folder `clean` (an ImageFolderDataset,
    resized and cropped by its own transform), else `clean` (any in-memory set) corrupted on the fly (or all at once
    with precompute=True). `backend` corrupts generated and in-memory images."""
    check_backend(backend)
    if imagenet_c is not None:
        return imagenet_c_folder(imagenet_c, corruption, severity, model_transform=transform,
                                 skip_bad_images=skip_bad_images, limit=limit)
    if isinstance(clean, ImageFolderDataset):
        return GeneratedImageNetC(clean, corruption, severity, seed=seed, cache_dir=cache_dir,
                                  workers=generation_workers(workers), source_hashes=source_hashes, backend=backend)
    if clean is None:
        raise EllbenchError("corruptions need clean data (--data) or a released ImageNet-C folder (--imagenet-c)")
    return CorruptedDataset(clean, corruption, severity, seed=seed, precompute=precompute, backend=backend)


def corrupted_datasets(suite: CorruptionSuite, **sources) -> dict[tuple[str, int], object]:
    """corrupted_dataset for every entry of a suite, to share between models (pass as run_corruption_suite's
    `datasets`); keyword arguments as corrupted_dataset's, e.g. clean=..., precompute=True (with `workers`
    processes corrupting in-memory images: None, every core on enough images); the backend defaults to the suite's."""
    sources.setdefault("backend", suite.backend)
    if isinstance(sources.get("clean"), ImageFolderDataset) and sources.get("imagenet_c") is None:
        sources.setdefault("source_hashes", file_hashes(sources["clean"].files))
    if not sources.get("precompute") or sources.get("imagenet_c") is not None or \
            isinstance(sources.get("clean"), ImageFolderDataset):
        return {(c, s): corrupted_dataset(c, s, **sources) for c, s in suite.entries()}
    # In-memory entries, precomputed together: imagecorruptions runs image by image on one core, so the suite's images
    # are spread over `workers` processes (None: every core, on enough images).
    workers = sources.pop("workers", None)
    built = {(c, s): corrupted_dataset(c, s, **{**sources, "precompute": False}) for c, s in suite.entries()}
    precompute_all(list(built.values()), workers=workers)
    return built


def backend_record(backend: str, source: str) -> str:
    """The backend as results show it: 'imagecorruptions 1.1.2', 'torch torch-1', or the released files."""
    return "released ImageNet-C files" if source == "imagenet-c" else f"{backend} {backend_version(backend)}"


def corruption_source(clean, imagenet_c) -> str:
    """Where an entry's images come from: 'imagenet-c' (released), 'generated' (from a folder) or 'in-memory'."""
    if imagenet_c is not None:
        return "imagenet-c"
    return "generated" if isinstance(clean, ImageFolderDataset) else "in-memory"


def corruption_specs(loaded, suite: CorruptionSuite, *, clean=None, imagenet_c=None, batch_size: int = 64,
                     seed: int = 0, cache_dir=None, workers: int | None = None, skip_bad_images: bool = False,
                     limit: int | None = None, datasets: dict | None = None, transform=None,
                     backend: str = DEFAULT_BACKEND) -> Iterator[tuple[str, int, JobSpec]]:
    """The plan, entry by entry: (corruption, severity, job spec); each entry's data is made when it is reached.

    `workers` is the number of processes preparing images: generating ImageNet-C (None: every core) and loading
    batches (None: runner.default_loader_workers). `transform` is the model's eval transform, for released ImageNet-C
    (clean folders carry their own). `backend` corrupts generated and in-memory entries; `datasets` built beforehand
    must have been built with it.
    """
    check_backend(backend)
    source = corruption_source(clean, imagenet_c)
    by_backend = {} if source == "imagenet-c" else backend_settings(backend)
    hashes = file_hashes(clean.files) if source == "generated" and not datasets else None
    for corruption, severity in suite.entries():
        dataset = datasets.get((corruption, severity)) if datasets else None
        if dataset is None:
            dataset = corrupted_dataset(corruption, severity, clean=clean, imagenet_c=imagenet_c, seed=seed,
                                        cache_dir=cache_dir, workers=workers, skip_bad_images=skip_bad_images,
                                        limit=limit, source_hashes=hashes, transform=transform, backend=backend)
        elif source != "imagenet-c" and getattr(dataset, "backend", backend) != backend:
            raise EllbenchError(f"the prepared data set of {corruption} s{severity} was corrupted by "
                                f"{dataset.backend}, not {backend}")
        notes = {"corruption_source": source, "corruption_backend": backend_record(backend, source),
                 "skipped_images": getattr(dataset, "skipped", 0),
                 "upsampled": getattr(dataset, "upsampled", False), "resized": getattr(dataset, "resized", None)}
        settings = {"corruption": corruption, "severity": severity, "source": source, "batch_size": batch_size,
                    **by_backend}
        yield corruption, severity, clean_spec(loaded, dataset, batch_size=batch_size, seed=seed, task="corruption",
                                               settings=settings, description=f"{corruption} s{severity} {loaded.name}",
                                               provenance=notes, workers=workers)


def run_corruption_suite(store, loaded, suite: CorruptionSuite, *, clean=None, imagenet_c=None, batch_size: int = 64,
                         seed: int = 0, cache_dir=None, workers: int | None = None, skip_bad_images: bool = False,
                         limit: int | None = None, baseline: str | None = None, progress: bool = True,
                         datasets: dict | None = None, transform=None, backend: str | None = None) -> dict:
    """Evaluate one model on every (corruption, severity) of a suite, each a resumable job; return the summary.

    `datasets` holds entries' data sets built beforehand by corrupted_datasets (with the same clean/imagenet_c).
    `transform` is the model's eval transform, which released ImageNet-C needs (ellbench.tasks.inputs.eval_transform).
    `backend` (default: the suite's) corrupts generated and in-memory entries; released ImageNet-C ignores it.
    `loaded` is an ellbench.models.loading.LoadedModel. `clean` (a data set) also gives the clean error for relative
    mCE. AlexNet-relative CE and mCE are computed only for 1000-class (ImageNet) data; the baseline used, the
    source of the corrupted images, skipped files and small-image upsampling are recorded in the summary.
    """
    source = corruption_source(clean, imagenet_c)
    baseline = baseline or suite.baseline
    backend = check_backend(backend or suite.backend)
    errors, entries, fingerprints, num_classes = {}, [], [], None
    for corruption, severity, spec in corruption_specs(
            loaded, suite, clean=clean, imagenet_c=imagenet_c, batch_size=batch_size, seed=seed, cache_dir=cache_dir,
            workers=workers, skip_bad_images=skip_bad_images, limit=limit, datasets=datasets, transform=transform,
            backend=backend):
        job = run(store, spec, progress=progress)
        errors[corruption, severity] = 1.0 - job["summary"]["accuracy"]
        entries.append({"corruption": corruption, "severity": severity, "error": errors[corruption, severity],
                        "n": job["summary"]["n"], **spec.provenance})
        fingerprints.append(spec.dataset.fingerprint)
        num_classes = spec.dataset.num_classes
    clean_error = None
    if clean is not None:
        clean_job = run_clean(store, loaded, clean, batch_size=batch_size, seed=seed, progress=progress,
                              workers=workers)
        clean_error = 1.0 - clean_job["summary"]["accuracy"]
    summary = {"suite": suite.name, "source": source, "backend": backend_record(backend, source),
               "entries": entries, "clean_error": clean_error,
               "mean_error": sum(errors.values()) / len(errors), "upsampled": any(e["upsampled"] for e in entries),
               "skipped_images": max(e["skipped_images"] for e in entries),
               "resized": next((e["resized"] for e in entries if e.get("resized")), None)}
    if num_classes == 1000:
        summary.update(summarize_corruptions(errors, clean_error=clean_error, baseline=baseline))
    else:
        summary.update(mce=None, mce_note="AlexNet-relative CE/mCE is defined only for ImageNet-1k classes and data")
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id,
                  data=content_hash("\n".join(fingerprints).encode())[:16], task="corruption-summary",
                  settings={"suite": suite.name, "entries": suite.entries(), "source": source, "baseline": baseline,
                            "clean": getattr(clean, "fingerprint", None),
                            **({} if source == "imagenet-c" else backend_settings(backend))},
                  seed=seed, amp=loaded.amp)
    return store.record_result(key, summary, provenance(loaded.device))["summary"]
