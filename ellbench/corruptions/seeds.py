"""Per-image seeds of the corruptions: one image gets the same draws whatever its batch, shard, worker or backend.

Both backends seed from (seed, sha256 of the image's content or source file, corruption, severity): the
imagecorruptions backend seeds NumPy's legacy RNG with the 256 bits, the torch backend a torch generator with 64 of
them (ellbench.corruptions.torch_backend.generator_seed).
"""

from __future__ import annotations

import hashlib

import numpy as np


def content_hash(data: bytes | np.ndarray) -> str:
    """sha256 hex of a file's bytes or of an array's shape and bytes."""
    if isinstance(data, np.ndarray):
        data = repr(data.shape).encode() + np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def image_seed(seed: int, image_hash: str, corruption: str, severity: int) -> np.ndarray:
    """256 bits for NumPy's legacy RNG from (seed, image content hash, corruption, severity)."""
    digest = hashlib.sha256(f"{seed}\0{image_hash}\0{corruption}\0{severity}".encode()).digest()
    return np.frombuffer(digest, dtype=np.uint32)
