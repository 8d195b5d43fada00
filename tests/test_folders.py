"""ImageNet-style folders, ImageNet-A/R label spaces and logit restriction, on tiny folders of real photographs."""

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
import torchvision.transforms as T
from PIL import Image

from ellbench.data.folders import ImageFolderDataset
from ellbench.data.shift import open_shift_dataset, restrict_logits, subset_indices_1k, subset_wnids
from ellbench.errors import EllbenchError
from ellbench.runner import Batch
from ellbench.tasks.shift import shift_evaluator

TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"
ALL_WNIDS = (TIMM_INFO / "imagenet_synsets.txt").read_text().split()  # independent of ellbench's loader
PHOTOS = {"astronaut": skimage.data.astronaut, "coffee": skimage.data.coffee, "chelsea": skimage.data.chelsea,
          "rocket": skimage.data.rocket, "camera": skimage.data.camera}


def write_photo(path: Path, name: str, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PHOTOS[name]()).save(path, quality=quality)


@pytest.fixture(scope="module")
def wnid_folder(tmp_path_factory):
    """val/<wnid>/<file> with 3 real classes (2, 2 and 1 photos; one grey)."""
    root = tmp_path_factory.mktemp("val")
    layout = {"n01443537": ["coffee", "astronaut"], "n01440764": ["rocket", "chelsea"], "n02123045": ["camera"]}
    for wnid, photos in layout.items():
        for k, photo in enumerate(photos):
            write_photo(root / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", photo)
    return root


def test_wnid_folder_labels_follow_imagenet_1k_and_sorted_order(wnid_folder):
    dataset = ImageFolderDataset(wnid_folder)
    expected_files = sorted(wnid_folder.glob("*/*.JPEG"))  # sorted by wnid, then file name
    assert dataset.files == expected_files
    assert dataset.labels == [ALL_WNIDS.index(p.parent.name) for p in expected_files]
    assert dataset.labels[:2] == [0, 0] and dataset.labels[-1] == 281  # tench, tabby cat
    assert dataset.num_classes == 1000 and dataset.class_names[0] == "tench" and dataset.skipped == 0


def test_default_transform_is_resize_256_crop_224_as_torchvision(wnid_folder):
    dataset = ImageFolderDataset(wnid_folder)  # timm's defaults: Hendrycks' and torchvision's classic eval
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        expected = reference(Image.open(dataset.files[index]).convert("RGB"))
        assert torch.equal(image, expected)
    grey, _ = dataset[len(dataset) - 1]  # the grey photo arrives as 3 equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert dataset.transform_description == "timm eval 224x224 bilinear crop_pct 0.875 center"


@pytest.mark.parametrize("settings", [
    dict(input_size=(384, 384), interpolation="bicubic", crop_pct=1.0),
    dict(input_size=(160, 200), interpolation="bilinear", crop_pct=0.9),
    dict(input_size=(224, 224), interpolation="bicubic", crop_pct=0.95, crop_mode="squash"),
    dict(input_size=(224, 224), interpolation="bicubic", crop_pct=0.9, crop_mode="border", mean=(0.5, 0.5, 0.5)),
])
def test_transform_is_timms_normalising_transform_without_the_normalisation(wnid_folder, settings):
    from timm.data import create_transform

    from ellbench.data.transforms import EvalTransform

    dataset = ImageFolderDataset(wnid_folder, transform=EvalTransform(**settings))
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.2, 0.1)
    reference = create_transform(input_size=(3, *settings["input_size"]), crop_pct=settings["crop_pct"],
                                 interpolation=settings["interpolation"], crop_mode=settings.get("crop_mode"),
                                 mean=settings.get("mean", mean), std=std)
    for index in range(len(dataset)):
        image, _ = dataset[index]
        assert image.shape == (3, *settings["input_size"]) and 0 <= image.min() and image.max() <= 1
        expected = reference(Image.open(dataset.files[index]).convert("RGB"))
        ours = (image - torch.tensor(settings.get("mean", mean)).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        assert torch.allclose(ours, expected, atol=1e-6, rtol=0)


def test_no_transform_keeps_images_as_stored(wnid_folder):
    as_stored = ImageFolderDataset(wnid_folder, transform=None)
    assert as_stored.image_size is None and as_stored.transform_description == "as stored"
    assert as_stored[0][0].shape == (3, *np.asarray(Image.open(as_stored.files[0])).shape[:2])


def test_non_wnid_folder_falls_back_to_sorted_order(tmp_path):
    for cls in ("zebra", "apple", "mango"):
        write_photo(tmp_path / cls / "a.png", "coffee")
    dataset = ImageFolderDataset(tmp_path, transform=None)
    assert dataset.class_names == ["apple", "mango", "zebra"] and dataset.num_classes == 3
    assert dataset.labels == [0, 1, 2]


def test_limit_spreads_over_classes(wnid_folder):
    dataset = ImageFolderDataset(wnid_folder, limit=3)
    assert [f.name for f in dataset.files] == ["ILSVRC2012_val_00000000.JPEG"] * 3
    assert sorted({f.parent.name for f in dataset.files}) == sorted(p.name for p in wnid_folder.iterdir())


def test_fingerprint_is_stable_and_tracks_changes(tmp_path):
    for cls, photo in (("a", "coffee"), ("b", "rocket")):
        write_photo(tmp_path / cls / "x.jpg", photo)
    first = ImageFolderDataset(tmp_path).fingerprint
    assert ImageFolderDataset(tmp_path).fingerprint == first
    from ellbench.data.transforms import EvalTransform

    assert ImageFolderDataset(tmp_path, transform=EvalTransform(input_size=(192, 192))).fingerprint != first
    assert ImageFolderDataset(tmp_path, transform=EvalTransform(interpolation="bicubic")).fingerprint != first
    target = tmp_path / "b" / "x.jpg"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert ImageFolderDataset(tmp_path).fingerprint != first


def test_truncated_jpeg_is_a_one_line_error_or_skipped(tmp_path):
    for k, photo in enumerate(("coffee", "rocket", "chelsea")):
        write_photo(tmp_path / "n01440764" / f"{k}.JPEG", photo)
    bad = tmp_path / "n01440764" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dataset = ImageFolderDataset(tmp_path)
    dataset[0]
    with pytest.raises(EllbenchError) as caught:
        dataset[1]
    message = str(caught.value)
    assert str(bad) in message and "\n" not in message and "--skip-bad-images" in message
    skipping = ImageFolderDataset(tmp_path, skip_bad_images=True)
    assert skipping.skipped == 1 and len(skipping) == 2 and bad not in skipping.files
    assert all(skipping[i][0].shape == (3, 224, 224) for i in range(2))


def test_missing_or_empty_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(EllbenchError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(EllbenchError, match="no images"):
        ImageFolderDataset(tmp_path)


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_shipped_subset_lists_match_timm(name):
    letter = name[-1]
    assert list(subset_wnids(name)) == (TIMM_INFO / f"imagenet_{letter}_synsets.txt").read_text().split()
    assert list(subset_indices_1k(name)) == [int(i) for i in (TIMM_INFO / f"imagenet_{letter}_indices.txt")
                                             .read_text().split()]
    assert [ALL_WNIDS[i] for i in subset_indices_1k(name)] == list(subset_wnids(name))


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_restricted_logits_equal_boolean_mask_and_indexing(name):
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    wanted = set(subset_wnids(name))
    mask = torch.tensor([w in wanted for w in ALL_WNIDS])  # Hendrycks' imagenet-r eval.py style
    restricted = restrict_logits(logits, name)
    assert restricted.shape == (4, 200)
    assert torch.equal(restricted, logits[:, mask])
    assert torch.equal(restricted, logits[:, list(subset_indices_1k(name))])
    with pytest.raises(EllbenchError, match="1000"):
        restrict_logits(torch.zeros(2, 10), name)


def test_shift_folder_and_evaluator(tmp_path):
    wnids = subset_wnids("imagenet-r")
    for k, wnid in enumerate((wnids[5], wnids[17])):
        write_photo(tmp_path / wnid / f"art_{k}.jpg", ("coffee", "rocket")[k])
    dataset = open_shift_dataset("imagenet-r", tmp_path)
    assert dataset.labels == [5, 17] and dataset.num_classes == 200 and dataset.name == "imagenet-r"

    class FavoursOneClass(torch.nn.Module):
        """Largest logit on ImageNet-1k class `subset_indices_1k[17]`, and a larger one outside the subset."""

        def forward(self, images):
            logits = torch.zeros(len(images), 1000)
            logits[:, subset_indices_1k("imagenet-r")[17]] = 1.0
            logits[:, 0] = 5.0  # tench is not in ImageNet-R: must be ignored
            return logits

    images = torch.stack([dataset[i][0] for i in range(2)])
    batch = Batch(0, torch.tensor([0, 1]), images, torch.tensor([5, 17]))
    rows = shift_evaluator(FavoursOneClass(), "imagenet-r")(batch)
    assert [(r["idx"], r["pred"], r["correct"]) for r in rows] == [(0, 17, 0), (1, 17, 1)]
    assert rows[1]["top5"] == 1  # top-5 over the 200 restricted logits: class 17 is the first of them
    with pytest.raises(EllbenchError, match="not in the expected class list"):
        write_photo(tmp_path / "n01440764" / "x.jpg", "coffee")
        open_shift_dataset("imagenet-r", tmp_path)


def test_run_shift_stores_restricted_accuracy_and_skipped_count(tmp_path):
    from ellbench.models.loading import LoadedModel
    from ellbench.store import Store
    from ellbench.tasks.shift import run_shift

    wnids, indices = subset_wnids("imagenet-a"), subset_indices_1k("imagenet-a")
    for k, (wnid, name) in enumerate(zip((wnids[0], wnids[3], wnids[3]), ("coffee", "rocket", "chelsea"), strict=True)):
        write_photo(tmp_path / "a" / wnid / f"{k}.jpg", name)
    torn = tmp_path / "a" / wnids[0] / "9.jpg"
    torn.write_bytes((tmp_path / "a" / wnids[0] / "0.jpg").read_bytes()[:3000])

    class PredictsSubsetClassThree(torch.nn.Module):
        def forward(self, images):
            logits = torch.zeros(len(images), 1000)
            logits[:, indices[3]] = 2.0
            logits[:, 1] = 9.0  # goldfish: outside ImageNet-A, must not win
            return logits

    model = LoadedModel(name="fixed", module=PredictsSubsetClassThree(), checkpoint_id="none", device="cpu")
    store = Store(tmp_path / "r.sqlite")
    with pytest.raises(EllbenchError, match="9.jpg"):
        run_shift(store, model, "imagenet-a", tmp_path / "a", batch_size=2, progress=False)
    job = run_shift(store, model, "imagenet-a", tmp_path / "a", batch_size=2, skip_bad_images=True, progress=False)
    assert job["summary"]["n"] == 3 and job["summary"]["accuracy"] == pytest.approx(2 / 3)
    assert job["provenance"]["skipped_images"] == 1 and job["task"] == "imagenet-a"
