"""`ellbench eval` equals timm's validate.py on real photographs: the product's promise. Keep these tests.

The reference pipeline is validate.py's own sequence of timm calls (huggingface/pytorch-image-models, validate.py):
resolve_model_input_args -> create_model -> load_checkpoint -> resolve_input_data_config(use_test_size=True) ->
create_dataset -> create_loader (with its prefetcher, which normalises on the device) -> timm.utils.accuracy.
Weights are random, saved as safetensors; the photographs are scikit-image's samples at several sizes and aspect
ratios, in ImageNet layout. No network: published weights come from a Hugging Face cache folder the test builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import ellbench.models  # noqa: F401  (registers ellbench's models with timm)
from ellbench.errors import EllbenchError

TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"
ALL_WNIDS = (TIMM_INFO / "imagenet_synsets.txt").read_text().split()
# (class folder, file, photo, size as (width, height) or None): wide, tall, small grey, square.
PHOTOS = [("n01440764", "a.JPEG", "coffee", None), ("n01440764", "b.JPEG", "chelsea", (260, 390)),
          ("n02123045", "a.JPEG", "camera", (180, 150)), ("n02123045", "b.JPEG", "astronaut", None)]
MODELS = ["deit_tiny_patch16_224", "deit_base_patch16_384", "vit_small_patch16_224.augreg_in21k_ft_in1k",
          "resnet18.a1_in1k", "elliptical_tiny_patch16_224"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_photos(root: Path, layout) -> Path:
    """ImageNet layout <root>/<wnid>/<file> of JPEGs from scikit-image's sample photographs."""
    for wnid, name, photo, size in layout:
        image = Image.fromarray(getattr(skimage.data, photo)())
        if size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        (root / wnid).mkdir(parents=True, exist_ok=True)
        image.save(root / wnid / name, quality=92)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("val"), PHOTOS)


def random_weights(name: str, folder: Path, seed: int = 0) -> Path:
    """A safetensors file of `name`'s randomly initialised weights."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def ellbench(*args: str) -> dict:
    """Run an ellbench command in this process (the CLI's own code path) and return its --json output."""
    from typer.testing import CliRunner

    from ellbench.cli import app

    result = CliRunner().invoke(app, [*args, "--json", "--device", "cpu"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def validate_py(name: str, checkpoint: Path, root: Path, batch_size: int = 2, **args) -> dict:
    """timm's validate.py on a folder, step for step with timm's public functions: logits per file and acc1/acc5.

    Targets are ImageNet-1k indices of the wnid folders (validate.py's --class-map for this folder's classes).
    """
    from timm.data import create_dataset, create_loader, resolve_input_data_config
    from timm.models import load_checkpoint, resolve_model_input_args
    from timm.utils import accuracy

    model = timm.create_model(**resolve_model_input_args(name, args, pretrained=False))
    load_checkpoint(model, str(checkpoint))
    model.eval()
    config = resolve_input_data_config(model, args, use_test_size=True)
    dataset = create_dataset("", root=str(root), split="validation")
    loader = create_loader(dataset, input_size=config["input_size"], batch_size=batch_size, use_prefetcher=True,
                           interpolation=config["interpolation"], mean=config["mean"], std=config["std"],
                           num_workers=0, crop_pct=config["crop_pct"], crop_mode=config["crop_mode"],
                           device=torch.device("cpu"))
    to_1k = {index: ALL_WNIDS.index(wnid) for wnid, index in dataset.reader.class_to_idx.items()}
    outputs, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            outputs.append(model(images))
            targets.append(torch.tensor([to_1k[int(t)] for t in target]))
    output, target = torch.cat(outputs), torch.cat(targets)
    acc1, acc5 = accuracy(output, target, topk=(1, 5))
    files = [str(f) for f in dataset.filenames()]
    return {"logits": dict(zip(files, output.numpy(), strict=True)), "targets": dict(zip(files, target.tolist(),
            strict=True)), "acc1": float(acc1), "acc5": float(acc5), "config": config}


def ellbench_files(root: Path) -> list[str]:
    """The data-set order ellbench promises for --save-logits: sorted class folders, sorted files."""
    from ellbench.data.folders import ImageFolderDataset

    dataset = ImageFolderDataset(root)
    return [p.relative_to(root).as_posix() for p in dataset.files]


@pytest.mark.parametrize("name", MODELS)
def test_eval_logits_equal_timms_validate_py(name, photos, tmp_path):
    checkpoint = random_weights(name, tmp_path)
    logits_path = tmp_path / "logits.npy"
    result = ellbench("eval", name, "--checkpoint", str(checkpoint), "--data", str(photos), "--batch-size", "2",
                      "--save-logits", str(logits_path), "--out", str(tmp_path / "out"))
    reference = validate_py(name, checkpoint, photos)
    ours = np.load(logits_path)
    assert ours.dtype == np.float32 and ours.shape == (len(PHOTOS), 1000)
    files = ellbench_files(photos)
    expected = np.stack([reference["logits"][f] for f in files])
    assert np.abs(ours - expected).max() <= 1e-4
    config = reference["config"]
    height, width = config["input_size"][1:]
    assert result["transform"] == (f"timm eval {height}x{width} {config['interpolation']} crop_pct "
                                   f"{config['crop_pct']:g} {config['crop_mode']}")
    assert result["top1"] == pytest.approx(reference["acc1"], abs=1e-9)
    assert result["top5"] == pytest.approx(reference["acc5"], abs=1e-9)
    assert result["checkpoint"].startswith("sha256:") and result["n"] == len(PHOTOS)


def test_the_reference_settings_are_each_models_own():
    """The models above cover what differs: bicubic 0.9, 384 px crop 1.0, mean/std 0.5, a test size (288 px)."""
    from timm.data import resolve_input_data_config

    configs = {name: resolve_input_data_config(timm.create_model(name), {}, use_test_size=True) for name in
               ("deit_tiny_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k", "resnet18.a1_in1k")}
    assert configs["deit_tiny_patch16_224"]["crop_pct"] == 0.9
    assert configs["vit_small_patch16_224.augreg_in21k_ft_in1k"]["mean"] == (0.5, 0.5, 0.5)
    assert configs["resnet18.a1_in1k"]["input_size"] == (3, 288, 288)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "resnet18.a1_in1k"])
def test_top1_and_top5_follow_validate_py_on_hits_and_misses(name, photos, tmp_path):
    """Labels placed at chosen ranks of each photo's logits: a top-1 hit, top-5-only hits and misses."""
    checkpoint = random_weights(name, tmp_path)
    first = validate_py(name, checkpoint, photos)
    ranks = {"n01440764/a.JPEG": 0, "n01440764/b.JPEG": 2, "n02123045/a.JPEG": 40, "n02123045/b.JPEG": 4}
    arranged = tmp_path / "arranged"
    layout = []
    for wnid, file, photo, size in PHOTOS:
        order = np.argsort(-first["logits"][f"{wnid}/{file}"], kind="stable")
        layout.append((ALL_WNIDS[int(order[ranks[f"{wnid}/{file}"]])], f"{photo}.JPEG", photo, size))
    write_photos(arranged, layout)
    result = ellbench("eval", name, "--checkpoint", str(checkpoint), "--data", str(arranged), "--batch-size", "3",
                      "--out", str(tmp_path / "out"))
    reference = validate_py(name, checkpoint, arranged, batch_size=3)
    assert (reference["acc1"], reference["acc5"]) == (25.0, 75.0)  # the arrangement did what it should
    assert (result["top1"], result["top5"]) == (pytest.approx(25.0), pytest.approx(75.0))

    from ellbench.store import Store

    store = Store.in_folder(tmp_path / "out")
    rows = store.outcomes(result["job"])
    files = ellbench_files(arranged)
    ranks_by_file = {photo: ranks[f"{wnid}/{file}"] for wnid, file, photo, _ in PHOTOS}
    for file, top5, correct, loss in zip(files, rows["top5"], rows["correct"], rows["loss"], strict=True):
        rank = ranks_by_file[Path(file).stem]
        assert (correct, top5) == (int(rank == 0), int(rank < 5))
        logits = torch.tensor(reference["logits"][file]).double()
        label = reference["targets"][file]
        assert loss == pytest.approx(float(torch.logsumexp(logits, 0) - logits[label]), abs=1e-4)


def test_save_logits_of_a_resumed_job_covers_every_example(photos, tmp_path):
    name = "deit_tiny_patch16_224"
    checkpoint = random_weights(name, tmp_path)
    common = ["eval", name, "--checkpoint", str(checkpoint), "--data", str(photos), "--batch-size", "3",
              "--out", str(tmp_path / "out")]
    first = ellbench(*common)
    again = ellbench(*common, "--save-logits", str(tmp_path / "l.npy"))  # the job is reused, its logits recomputed
    assert again["job"] == first["job"] and again["logits"] == str(tmp_path / "l.npy")
    reference = validate_py(name, checkpoint, photos)
    expected = np.stack([reference["logits"][f] for f in ellbench_files(photos)])
    assert np.abs(np.load(tmp_path / "l.npy") - expected).max() <= 1e-4


def test_the_transform_is_in_the_job_key_and_the_report(two_photos, tmp_path):
    from typer.testing import CliRunner

    from ellbench.cli import app
    from ellbench.store import Store

    out = str(tmp_path / "out")
    own = ellbench("eval", "deit_tiny_patch16_224", "--data", str(two_photos), "--out", out)
    other = ellbench("eval", "deit_tiny_patch16_224", "--data", str(two_photos), "--crop-pct", "0.8", "--out", out)
    assert own["job"] != other["job"]
    store = Store.in_folder(out)
    assert store.get_job(own["job"])["settings"]["transform"] == "timm eval 224x224 bicubic crop_pct 0.9 center"
    assert store.get_job(other["job"])["settings"]["transform"] == "timm eval 224x224 bicubic crop_pct 0.8 center"
    store.close()
    result = CliRunner().invoke(app, ["report", "--out", out, "--format", "md"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "results.md").read_text()
    section = text.split("## Image transforms", 1)[1].split("##", 1)[0]
    assert "crop_pct 0.9" in section and "crop_pct 0.8" in section


# --- top-5 with few classes -------------------------------------------------------------------------------------

def test_top5_is_capped_at_the_number_of_classes_as_timm_caps_it():
    from timm.utils import accuracy

    from ellbench.tasks.eval import classification_columns

    generator = torch.Generator().manual_seed(0)
    for classes in (4, 10, 1000):
        logits = torch.randn(64, classes, generator=generator)
        labels = torch.randint(0, classes, (64,), generator=generator)
        preds, columns = classification_columns(logits, labels)
        acc1, acc5 = accuracy(logits, labels, topk=(1, 5))
        assert 100 * (preds == labels).double().mean() == pytest.approx(float(acc1))
        assert 100 * columns["top5"].double().mean() == pytest.approx(float(acc5))
        ranks = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes above the label: explicit rank
        assert torch.equal(columns["top5"], (ranks < min(5, classes)).int())
    assert bool(columns["loss"].isfinite().all())
    with pytest.raises(EllbenchError, match="labels up to 7 but the model has 4 outputs"):
        classification_columns(torch.zeros(1, 4), torch.tensor([7]))


# --- published weights, offline -----------------------------------------------------------------------------------

def hf_cache_with(folder: Path, repo: str, weights: Path) -> Path:
    """A Hugging Face hub cache holding `weights` as <repo>'s model.safetensors at revision main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = folder / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(weights.read_bytes())
    return folder


def test_published_weights_not_cached_offline_are_one_line_and_exit_2(run_ellbench, subprocess_env, photos,
                                                                     tmp_path):
    subprocess_env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    result = run_ellbench("eval", "deit_small_patch16_224.fb_in1k", "--data", str(photos), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights of deit_small_patch16_224.fb_in1k")
    assert "hf-hub:timm/deit_small_patch16_224.fb_in1k" in lines[0] and "--checkpoint" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_published_weights_from_a_prepared_cache_or_a_file_are_one_job(run_ellbench, subprocess_env, photos,
                                                                        tmp_path):
    weights = random_weights("deit_small_patch16_224", tmp_path, seed=3)
    cache = hf_cache_with(tmp_path / "hub", "timm/deit_small_patch16_224.fb_in1k", weights)
    subprocess_env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(cache))
    common = ["--data", str(photos), "--limit", "2", "--device", "cpu", "--out", str(tmp_path / "out"), "--json"]
    from_hub = run_ellbench("eval", "deit_small_patch16_224", "--pretrained", *common)
    assert from_hub.returncode == 0, from_hub.stderr
    hub = json.loads(from_hub.stdout)
    assert hub["model"] == "deit_small_patch16_224.fb_in1k" and "published" in hub["weights"]
    from_file = run_ellbench("eval", "deit_small_patch16_224.fb_in1k", "--checkpoint", str(weights), *common)
    assert from_file.returncode == 0, from_file.stderr
    file = json.loads(from_file.stdout)
    from safetensors.torch import load_file

    from ellbench.models.loading import weights_sha256

    assert hub["checkpoint"] == file["checkpoint"] == f"sha256:{weights_sha256(load_file(weights))}"
    assert hub["job"] == file["job"] and hub["top1"] == file["top1"]


def test_pretrained_cfg_overlay_file_loads_the_same_weights_as_a_checkpoint(tmp_path):
    from ellbench.models.factory import build_model
    from ellbench.models.loading import load_for_eval, weights_sha256

    weights = random_weights("deit_tiny_patch16_224", tmp_path, seed=5)
    published = build_model("deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    from_file = load_for_eval("deit_tiny_patch16_224", weights)
    assert from_file.checkpoint_id == f"sha256:{weights_sha256(published.model.state_dict())}"
    with pytest.raises(EllbenchError, match="no published weights"):
        build_model("elliptical_tiny_patch16_224", pretrained=True)
    with pytest.raises(EllbenchError, match="no pretrained tag 'nope'.*fb_in1k"):
        build_model("deit_tiny_patch16_224.nope")
    with pytest.raises(EllbenchError, match="either --pretrained"):
        load_for_eval("deit_tiny_patch16_224", weights, pretrained=True)


# --- 384 px models and other timm classifiers in every command ---------------------------------------------------

@pytest.fixture(scope="module")
def two_photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("two"), PHOTOS[1:3])


def test_a_384_px_model_runs_in_eval_attack_corrupt_shift_and_collapse(two_photos, tmp_path):
    from ellbench.data.shift import subset_wnids

    name, out = "vit_tiny_patch16_384", str(tmp_path / "out")
    transform = "timm eval 384x384 bicubic crop_pct 1 center"
    common = ["--out", out, "--batch-size", "2"]
    assert ellbench("eval", name, "--data", str(two_photos), *common)["transform"] == transform
    attacked = ellbench("attack", name, "--data", str(two_photos), "--attack", "FGSM", "--param", "eps=1/255",
                        *common)
    assert attacked["transform"] == transform and attacked["results"][1]["n"] == 2
    assert attacked["results"][1]["top5_accuracy"] is not None
    suite = tmp_path / "one.toml"
    suite.write_text('description = "one cheap corruption"\ncorruptions = ["contrast"]\n'
                     'severities = [1]\n')
    corrupted = ellbench("corrupt", name, "--data", str(two_photos), "--suite", str(suite), "--workers", "1",
                         "--cache-dir", str(tmp_path / "cache"), *common)
    assert corrupted["entries"][0]["n"] == 2 and corrupted["source"] == "generated"
    assert list((tmp_path / "cache" / "contrast" / "1").glob("seed0-384x384-bicubic-crop1-center-*"))
    wnids = subset_wnids("imagenet-r")
    shift_root = write_photos(tmp_path / "r", [(wnids[0], "x.jpg", "coffee", None),
                                               (wnids[1], "y.jpg", "rocket", (300, 200))])
    shifted = ellbench("shift", name, "--dataset", "imagenet-r", "--data", str(shift_root), *common)
    assert shifted["transform"] == transform and shifted["summary"]["n"] == 2
    assert 0 <= shifted["summary"]["top5_accuracy"] <= 1
    collapsed = ellbench("collapse", name, "--data", str(two_photos), *common)
    assert len(collapsed["layers"]) == 12


def test_img_size_crop_pct_and_interpolation_override_the_model(two_photos, tmp_path):
    result = ellbench("eval", "deit_tiny_patch16_224", "--data", str(two_photos), "--img-size", "160",
                      "--crop-pct", "1.0", "--interpolation", "bilinear", "--out", str(tmp_path))
    assert result["transform"] == "timm eval 160x160 bilinear crop_pct 1 center" and result["n"] == 2
    with pytest.raises(EllbenchError, match="--img-size set the eval transform of image folders"):
        ellbench("eval", "deit_tiny_patch16_224", "--data", "digits", "--img-size", "160", "--out", str(tmp_path))


def test_cnns_run_where_the_task_makes_sense_and_collapse_says_why_not(two_photos, tmp_path):
    out = ["--out", str(tmp_path), "--limit", "4"]
    attacked = ellbench("attack", "resnet18", "--data", "digits", "--attack", "FGSM", "--param", "eps=1/255", *out)
    assert attacked["results"][1]["n"] == 4  # sized for the 10 digit classes; its constructor takes no image size
    assert ellbench("eval", "convnext_atto", "--data", str(two_photos), *out)["n"] == 2
    with pytest.raises(EllbenchError) as caught:
        ellbench("collapse", "resnet18", "--data", str(two_photos), *out)
    assert "no attention layers" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(EllbenchError, match="convnext_atto cannot take digits"):
        ellbench("eval", "convnext_atto", "--data", "digits", *out)


# --- released ImageNet-C for a model of another size ---------------------------------------------------------------

def test_released_imagenet_c_is_kept_at_224_and_resized_for_other_sizes(tmp_path):
    from torchvision.transforms.functional import pil_to_tensor

    from ellbench.corruptions.imagenet_c import imagenet_c_folder
    from ellbench.data.transforms import EvalTransform

    folder = tmp_path / "noise" / "gaussian_noise" / "3" / "n01440764"
    folder.mkdir(parents=True)
    Image.fromarray(skimage.data.coffee()).resize((224, 224)).save(folder / "x.JPEG", quality=85)
    stored = pil_to_tensor(Image.open(folder / "x.JPEG").convert("RGB")).float() / 255
    at_224 = imagenet_c_folder(tmp_path, "gaussian_noise", 3,
                               model_transform=EvalTransform(interpolation="bicubic", crop_pct=0.9))
    assert torch.equal(at_224[0][0], stored) and at_224.resized is None  # Hendrycks: the files' pixels as they are
    at_384 = imagenet_c_folder(tmp_path, "gaussian_noise", 3,
                               model_transform=EvalTransform(input_size=(384, 384), interpolation="bicubic",
                                                             crop_pct=1.0))
    image = at_384[0][0]
    assert image.shape == (3, 384, 384) and "resized to 384x384 (bicubic)" in at_384.resized
    reference = Image.open(folder / "x.JPEG").convert("RGB").resize((384, 384), Image.Resampling.BICUBIC)
    assert torch.equal(image, pil_to_tensor(reference).float() / 255)
