"""Built-in data sets that need no download: scikit-learn's digits and Fashion-MNIST from its IDX files."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch

from ellbench.errors import EllbenchError

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0

# IDX type codes (LeCun's format): code -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class TensorImageDataset(torch.utils.data.Dataset):
    """Grey images held in memory as uint8 [N, H, W]; served as float [3, H, W] in [0, 1] (grey replicated)."""

    in_memory = True  # a batch is a slice of a tensor: loading it needs no worker processes

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, name: str, class_names, max_value: float = 255.0):
        if images.ndim != 3 or len(images) != len(labels):
            raise EllbenchError(f"{name}: expected images [N, H, W] and N labels, got {images.shape}, {labels.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
        self.max_value = float(max_value)
        self.name = name
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = int(images.shape[1])
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
        self.fingerprint = f"{name}:{len(labels)}:{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.get_batch(torch.tensor([index]))[0][0], int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] float32 in [0, 1] and labels [B] for the given indices."""
        grey = self.images[indices].to(torch.float32).div_(self.max_value)  # [B, H, W]
        return grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), self.labels[indices]

    def subset(self, limit: int | None) -> TensorImageDataset:
        """The first `limit` examples (fixed order), or self when limit is None or not smaller."""
        if limit is None or limit >= len(self):
            return self
        return TensorImageDataset(
            self.images[:limit].numpy(), self.labels[:limit].numpy(), name=self.name,
            class_names=self.class_names, max_value=self.max_value,
        )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array with its declared shape and type."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise EllbenchError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise EllbenchError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise EllbenchError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise EllbenchError(f"{path}: IDX body has {len(raw) - header} bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str, root: str | Path | None = None) -> TensorImageDataset:
    """Fashion-MNIST (28x28 grey, 10 classes) from the four IDX .gz files of the public release."""
    folder = Path(root) if root is not None else FASHION_MNIST_DEFAULT_ROOT
    image_file, label_file = FASHION_MNIST_FILES[split]
    missing = [name for name in (image_file, label_file) if not (folder / name).is_file()]
    if missing:
        raise EllbenchError(
            f"Fashion-MNIST file {missing[0]} not found in {folder}; install it with "
            "`apt-get install dataset-fashion-mnist` or download the four IDX .gz files of the public release "
            "(github.com/zalandoresearch/fashion-mnist) into a folder and pass it with --data-root"
        )
    images, labels = read_idx(folder / image_file), read_idx(folder / label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise EllbenchError(f"Fashion-MNIST files in {folder} have inconsistent shapes {images.shape}, {labels.shape}")
    return TensorImageDataset(images, labels, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES)


def load_digits(split: str) -> TensorImageDataset:
    """scikit-learn's bundled 8x8 digits (values 0-16), split into train/test by a fixed seeded permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images, labels = bunch.images.astype(np.uint8), bunch.target
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return TensorImageDataset(
        images[chosen], labels[chosen], name="digits", class_names=[str(d) for d in range(10)], max_value=16.0
    )
