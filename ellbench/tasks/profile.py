"""The profile task: efficiency figures of one model (ellbench.profile), stored as a result of the machine they were
measured on."""

from __future__ import annotations

from ellbench.runner import job_key, provenance

KEYED_SETTINGS = ("batch_size", "img_size", "device", "device_name", "amp", "compile", "threads", "num_classes",
                  "fused_attention")


def run_profile(store, name: str, *, checkpoint: str | None = None, seed: int = 0, **settings) -> dict:
    """Profile one model (ellbench.profile.profile_model) and store it as a 'profile' result; returns the result.

    Timings are measurements of a moment, so a profile is measured anew on every call: the stored job is keyed by
    the settings and the machine, and a repeat with the same key replaces the earlier figures.
    """
    from ellbench.models.loading import read_checkpoint, weights_sha256
    from ellbench.profile import profile_model

    read = read_checkpoint(checkpoint) if checkpoint is not None else None
    result = profile_model(name, checkpoint=read, seed=seed, **settings)
    # the same identity as the evaluation jobs of these weights (the model holds the file's float tensors as they are)
    checkpoint_id = f"sha256:{weights_sha256(read.state)}" if read else f"random-init:seed={seed}"
    key = job_key(model=name, checkpoint=checkpoint_id, data=f"synthetic:{result.get('img_size')}px", task="profile",
                  settings={k: result.get(k) for k in KEYED_SETTINGS}, seed=seed)
    store.replace_result(key, result, provenance(result.get("device", "cpu")))
    return result
