"""Built-in data sets: the IDX reader on hand-written files, Fashion-MNIST from a folder, the fixed digits split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ellbench.data import dataset_batch, open_dataset
from ellbench.data.builtin import FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_FILES, read_idx
from ellbench.errors import EllbenchError


def idx_bytes(type_code: int, shape: tuple[int, ...], body: bytes) -> bytes:
    """An IDX file by hand: two zero bytes, the type code, the number of dimensions, big-endian uint32 sizes, data."""
    return bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape) + body


def write(path, payload: bytes):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


# --- IDX reader --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_idx_reader_reads_hand_written_uint8_images(tmp_path, name):
    # Two 2x3 images holding 0..11 in row-major order.
    path = write(tmp_path / name, idx_bytes(0x08, (2, 2, 3), bytes(range(12))))
    array = read_idx(path)
    assert array.shape == (2, 2, 3)
    assert array.dtype == np.uint8
    assert array[0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert array[1].tolist() == [[6, 7, 8], [9, 10, 11]]


def test_idx_reader_decodes_big_endian_wider_types(tmp_path):
    # int16 0x0102 = 258 and 0xFFFE = -2; a 1-d file of two values.
    path = write(tmp_path / "values.idx", idx_bytes(0x0B, (2,), b"\x01\x02\xff\xfe"))
    assert read_idx(path).tolist() == [258, -2]
    # float32 big-endian 1.5 (0x3FC00000)
    path = write(tmp_path / "floats.idx.gz", idx_bytes(0x0D, (1,), b"\x3f\xc0\x00\x00"))
    assert read_idx(path).tolist() == [1.5]


@pytest.mark.parametrize("name", ["bad.idx", "bad.idx.gz"])
def test_idx_reader_rejects_bad_magic(tmp_path, name):
    payload = idx_bytes(0x08, (2,), b"\x01\x02")
    path = write(tmp_path / name, b"\x01" + payload[1:])
    with pytest.raises(EllbenchError, match="magic"):
        read_idx(path)
    path = write(tmp_path / name, bytes([0, 0, 0x42, 1]) + payload[4:])  # unknown type code
    with pytest.raises(EllbenchError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("name", ["short.idx", "short.idx.gz"])
def test_idx_reader_rejects_truncated_files(tmp_path, name):
    full = idx_bytes(0x08, (2, 2, 3), bytes(range(12)))
    with pytest.raises(EllbenchError, match="bytes"):
        read_idx(write(tmp_path / name, full[:-1]))  # body one byte short
    with pytest.raises(EllbenchError, match="header"):
        read_idx(write(tmp_path / name, full[:9]))  # header promises three sizes, holds one
    with pytest.raises(EllbenchError, match="bytes"):
        read_idx(write(tmp_path / name, full + b"\x00"))  # trailing garbage


def test_idx_reader_reports_a_corrupt_gzip_as_one_line(tmp_path):
    path = tmp_path / "broken.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (4,), bytes(4)))[:-6])
    with pytest.raises(EllbenchError):
        read_idx(path)


# --- Fashion-MNIST from a folder ---------------------------------------------------------------------------------

def write_fashion_folder(folder, images: np.ndarray, labels: np.ndarray, split: str):
    image_file, label_file = FASHION_MNIST_FILES[split]
    write(folder / image_file, idx_bytes(0x08, images.shape, images.astype(np.uint8).tobytes()))
    write(folder / label_file, idx_bytes(0x08, labels.shape, labels.astype(np.uint8).tobytes()))


def test_fashion_mnist_reads_a_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_fashion_folder(tmp_path, images, labels, "test")
    dataset = open_dataset("fashion-mnist", "test", root=tmp_path)
    assert len(dataset) == 5 and dataset.num_classes == 10 and dataset.image_size == 6
    assert dataset.class_names[0] == "T-shirt/top"
    for i in range(5):
        image, label = dataset[i]
        assert image.shape == (3, 6, 6) and image.dtype == torch.float32
        assert label == int(labels[i])
        expected = torch.from_numpy(images[i].astype(np.float32) / 255.0)
        for channel in range(3):
            assert torch.equal(image[channel], expected)
    assert float(dataset[0][0].min()) == 0.0 and float(dataset[0][0].max()) == 1.0
    # the training files are not there: a one-line error naming the missing file
    with pytest.raises(EllbenchError, match="train-images-idx3-ubyte.gz"):
        open_dataset("fashion-mnist", "train", root=tmp_path)


def test_fashion_mnist_with_mismatched_files_is_a_user_error(tmp_path):
    write_fashion_folder(tmp_path, np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.uint8), "test")
    with pytest.raises(EllbenchError):
        open_dataset("fashion-mnist", "test", root=tmp_path)


def test_missing_fashion_mnist_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(EllbenchError) as caught:
        open_dataset("fashion-mnist", root=tmp_path / "nowhere")
    message = str(caught.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message


@pytest.mark.skipif(not (FASHION_MNIST_DEFAULT_ROOT / FASHION_MNIST_FILES["test"][0]).is_file(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_the_installed_fashion_mnist_test_set_has_the_release_shape():
    # The public release: 10,000 test images of 28x28, 1,000 per class.
    dataset = open_dataset("fashion-mnist", "test")
    assert len(dataset) == 10_000 and dataset.image_size == 28
    assert torch.bincount(dataset.labels, minlength=10).tolist() == [1000] * 10
    images, _ = dataset_batch(dataset, list(range(0, 10_000, 997)))
    assert images.shape == (11, 3, 28, 28) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert open_dataset("fashion-mnist", "test", limit=5).fingerprint != dataset.fingerprint


# --- digits ------------------------------------------------------------------------------------------------------

def as_records(dataset) -> list[tuple[bytes, int]]:
    """(image as the original 0..16 integers, label) for every example, recovered from the [0, 1] floats."""
    images, labels = dataset_batch(dataset, list(range(len(dataset))))
    grey = images[:, 0] * 16  # k/16 is exact in float32, so this recovers the integers exactly
    assert torch.equal(grey, grey.round())
    return [(row.to(torch.uint8).numpy().tobytes(), int(y)) for row, y in zip(grey, labels, strict=True)]


def test_digits_split_is_a_fixed_partition_of_sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = open_dataset("digits", "train"), open_dataset("digits", "test")
    assert len(test) == round(0.25 * len(bunch.target)) and len(train) + len(test) == len(bunch.target)
    # Together the splits are exactly sklearn's examples (as a multiset), so they are disjoint and complete.
    reference = sorted((img.astype(np.uint8).tobytes(), int(y)) for img, y in zip(bunch.images, bunch.target,
                                                                                 strict=True))
    train_records, test_records = as_records(train), as_records(test)
    assert sorted(train_records + test_records) == reference
    # Fixed: a second load yields the same examples in the same order.
    assert as_records(open_dataset("digits", "test")) == test_records
    # and the test split is not simply the first quarter of sklearn's order.
    first_quarter = [(img.astype(np.uint8).tobytes(), int(y)) for img, y in
                     zip(bunch.images[:len(test)], bunch.target[:len(test)], strict=True)]
    assert test_records != first_quarter


def test_digits_images_are_three_channel_floats_in_unit_range():
    dataset = open_dataset("digits", "test")
    assert dataset.name == "digits" and dataset.num_classes == 10 and dataset.image_size == 8
    assert dataset.class_names == [str(d) for d in range(10)]
    images, labels = dataset_batch(dataset, list(range(len(dataset))))
    assert images.shape == (len(dataset), 3, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.long and set(labels.tolist()) == set(range(10))
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    image, label = dataset[7]
    assert torch.equal(image, images[7]) and label == int(labels[7])


def test_dataset_batch_without_a_fast_path_matches_the_fast_path():
    dataset = open_dataset("digits", "test", limit=10)

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            return dataset[index]

    fast_images, fast_labels = dataset_batch(dataset, [4, 0, 9])
    slow_images, slow_labels = dataset_batch(Plain(), [4, 0, 9])
    assert torch.equal(fast_images, slow_images) and torch.equal(fast_labels, slow_labels)


def test_digits_fingerprint_is_stable_and_depends_on_the_limit():
    full = open_dataset("digits", "test").fingerprint
    assert open_dataset("digits", "test").fingerprint == full
    assert open_dataset("digits", "train").fingerprint != full
    ten, eleven = open_dataset("digits", limit=10), open_dataset("digits", limit=11)
    assert len(ten) == 10 and ten.fingerprint != eleven.fingerprint != full
    assert open_dataset("digits", limit=10).fingerprint == ten.fingerprint
    assert as_records(ten) == as_records(open_dataset("digits"))[:10]  # the limit keeps the first examples
    # A limit at or above the size is the whole set, so it is the same data and the same fingerprint.
    assert open_dataset("digits", limit=10_000).fingerprint == full
    # (Stable across processes too: test_store's SIGKILL test finds the killed process's job id again.)


def test_fingerprint_covers_images_labels_and_name():
    from ellbench.data.builtin import TensorImageDataset

    images, labels = np.zeros((2, 3, 3), np.uint8), np.array([0, 1])
    base = TensorImageDataset(images, labels, name="toy", class_names="ab").fingerprint
    assert TensorImageDataset(images.copy(), labels.copy(), name="toy", class_names="ab").fingerprint == base
    assert TensorImageDataset(images, labels[::-1].copy(), name="toy", class_names="ab").fingerprint != base
    brighter = images.copy()
    brighter[1, 2, 2] = 1
    assert TensorImageDataset(brighter, labels, name="toy", class_names="ab").fingerprint != base
    assert TensorImageDataset(images, labels, name="other", class_names="ab").fingerprint != base


@pytest.mark.parametrize("call, fragment", [
    (lambda: open_dataset("no-such-set"), "neither a built-in"),
    (lambda: open_dataset("digits", "validation"), "unknown split"),
    (lambda: open_dataset("digits", limit=0), "--limit"),
    (lambda: open_dataset("digits", limit=-3), "--limit"),
])
def test_bad_data_requests_are_one_line_user_errors(call, fragment):
    with pytest.raises(EllbenchError, match=fragment) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_a_regular_file_is_not_a_data_folder(tmp_path):
    path = tmp_path / "images.txt"
    path.write_text("not a folder")
    with pytest.raises(EllbenchError, match="not a folder"):
        open_dataset(str(path))
