"""Representation collapse: how alike the tokens leaving each attention layer are.

The measure of the Elliptical Attention paper (Nielsen et al., NeurIPS 2024, Fig. 3 and Fig. 6; the official
`rep_collapse`): take an attention layer's output after its output projection and before the residual add,
X in R^{N x C} for one example, normalise its rows and average the cosine similarities of all token pairs,

    collapse(X) = sum_{i > j} <x_i / |x_i|, x_j / |x_j|> / (N (N - 1) / 2)        (strict lower triangle),

then average over the examples. A value near 1 means the layer maps every token to the same direction.

Attention layers are found generically, so this works for any timm ViT-like model (DeiT, Elliptical, KDE/RKDE/MoM,
and models whose blocks sit inside stages, such as RVT or PiT): every module whose own name is ``attn``, in the order
the model registers them, which is the order its blocks run.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ellbench.errors import EllbenchError
from ellbench.runner import Batch, JobSpec, accuracy_summary, job_key, outcome_rows, run
from ellbench.tasks.eval import transform_settings

COLLAPSE_KEY = "collapse"


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules of a model in block order: every module named ``attn`` that is not inside another one."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "attn":
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # an `attn` inside an attention module is one of its parts, not another layer
        found.append((name, module))
    if not found:
        inner = getattr(model, "model", model)  # the timm model inside ellbench's [0, 1] wrapper
        raise EllbenchError(f"{type(inner).__name__} has no attention layers (modules named 'attn'); collapse measures "
                            "the tokens leaving the attention layers of a ViT-like model")
    return found


def attention_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the attention modules whose outputs are measured, in block order."""
    return [name for name, _ in attention_layers(model)]


def token_cosine_similarity(tokens: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of each example's tokens over the strict lower triangle: [B, N, C] -> [B].

    A token that is exactly zero has no direction; it counts as similarity 0 with every other token.
    """
    if tokens.dim() != 3:
        raise EllbenchError(f"collapse needs attention outputs shaped [B, N, C], got {list(tokens.shape)}")
    num_tokens = tokens.shape[1]
    if num_tokens < 2:
        raise EllbenchError("collapse needs at least 2 tokens per attention layer")
    unit = F.normalize(tokens.float(), dim=-1)  # [B, N, C], rows of norm 1
    gram = unit @ unit.transpose(1, 2)  # [B, N, N]
    rows, cols = torch.tril_indices(num_tokens, num_tokens, offset=-1, device=tokens.device)
    return gram[:, rows, cols].mean(dim=1)  # [B]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate with dropout and drop-path off, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _forward_with_collapse(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass returning the model's output and the per-example collapse of each attention layer [B, L]."""
    layers = attention_layers(model)
    batch = images.shape[0]
    per_layer: dict[str, list[Tensor]] = {name: [] for name, _ in layers}

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output) -> None:
            tokens = output[0] if isinstance(output, tuple) else output
            if tokens.dim() != 3 or tokens.shape[0] != batch:
                raise EllbenchError(f"collapse needs {name} to output [B={batch}, N, C], got {list(tokens.shape)}")
            # reduce at once so that no layer's activations are kept alive
            per_layer[name].append(token_cosine_similarity(tokens))

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in layers]
    try:
        with torch.no_grad(), _eval_mode(model):
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()

    for name, values in per_layer.items():
        if len(values) != 1:
            raise EllbenchError(f"attention module {name} ran {len(values)} times in one forward pass; expected once")
    collapse = torch.stack([values[0] for values in per_layer.values()], dim=1)  # [B, L]
    return output, collapse


def collapse_per_example(model: nn.Module, images: Tensor) -> Tensor:
    """Per-example, per-layer collapse of a batch: images [B, 3, H, W] in [0, 1] -> [B, L] (L attention layers)."""
    return _forward_with_collapse(model, images)[1]


def collapse_per_layer(model: nn.Module, images: Tensor) -> list[float]:
    """The paper's collapse measure per attention layer, averaged over the batch."""
    return collapse_per_example(model, images).double().mean(dim=0).tolist()


def collapse_evaluator(model: nn.Module) -> Callable[[Batch], list[dict]]:
    """Per-batch evaluation: one row per example with its prediction and its per-layer collapse.

    Each row holds ``idx, label, pred, correct`` and ``collapse`` (a list of L floats, one per attention layer, in the
    order of `attention_layer_names(model)`). `summarize_collapse` of all rows equals `collapse_per_layer` on all
    images, so a resumed job gives the same figure as one uninterrupted pass.
    """
    attention_layers(model)  # fail now, before any data is loaded, if the model has no attention layers

    def evaluate(batch: Batch) -> list[dict]:
        logits, collapse = _forward_with_collapse(model, batch.images)
        return outcome_rows(batch.indices, batch.labels, logits.argmax(dim=-1),
                            **{COLLAPSE_KEY: collapse.double().cpu()})

    return evaluate


def summarize_collapse(rows) -> list[float]:
    """Per-layer collapse over stored rows (row dicts, or the store's outcomes DataFrame): the mean over examples."""
    lists = list(rows[COLLAPSE_KEY]) if isinstance(rows, pd.DataFrame) else [row[COLLAPSE_KEY] for row in rows]
    if not lists:
        raise EllbenchError("no collapse rows to summarise")
    values = torch.tensor(lists, dtype=torch.float64)  # [examples, L]
    return values.mean(dim=0).tolist()


def collapse_summary(outcomes: pd.DataFrame) -> dict:
    """Summary of a finished collapse job for the store: example count, clean accuracy and per-layer collapse."""
    return {**accuracy_summary(outcomes), COLLAPSE_KEY: summarize_collapse(outcomes)}


def collapse_spec(loaded, dataset, *, batch_size: int, seed: int = 0, workers: int | None = None) -> JobSpec:
    """The job spec of one model's collapse on one data set; the layer names are part of its settings, so the stored
    per-layer lists can always be matched to the modules they came from."""
    try:
        layers = attention_layer_names(loaded.module)
    except EllbenchError as error:
        raise EllbenchError(f"{loaded.name}: {error}") from None
    key = job_key(model=loaded.name, checkpoint=loaded.checkpoint_id, data=dataset.fingerprint, task="collapse",
                  settings={"batch_size": batch_size, "layers": layers, **transform_settings(dataset)}, seed=seed,
                  amp=loaded.amp)
    return JobSpec(key=key, dataset=dataset, evaluate=collapse_evaluator(loaded.module), batch_size=batch_size,
                   device=loaded.device, description=f"collapse {loaded.name}", summarize=collapse_summary,
                   loader_workers=workers)


def run_collapse(store, loaded, dataset, *, batch_size: int, seed: int = 0, progress: bool = True,
                 workers: int | None = None) -> dict:
    """Per-layer collapse of one model on one data set, stored as a resumable 'collapse' job; returns the job row.

    `loaded` is an `ellbench.models.loading.LoadedModel`; `workers`: loader processes (None: the runner's default).
    """
    return run(store, collapse_spec(loaded, dataset, batch_size=batch_size, seed=seed, workers=workers),
               progress=progress)
