"""What every evaluation starts from: the model and the data it is evaluated on, opened in the right order.

An image folder is read through the model's own eval transform, so the model comes first and the folder is opened
with its transform (ellbench.data.transforms.model_eval_transform, with --img-size, --crop-pct and --interpolation as
overrides). A built-in small-image set is used as stored, so it comes first and a model without a checkpoint is
sized for it. The CLI's evaluation commands and the tests call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ellbench.errors import EllbenchError


@dataclass(frozen=True)
class TransformOverrides:
    """validate.py's --img-size, --crop-pct and --interpolation: None keeps the model's own setting."""

    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None

    def given(self) -> list[str]:
        return [f"--{name.replace('_', '-')}" for name in ("img_size", "crop_pct", "interpolation")
                if getattr(self, name) is not None]


NO_OVERRIDES = TransformOverrides()


def load_model(name: str, *, checkpoint: str | None = None, pretrained: bool = False, dataset=None, seed: int = 0,
               device: str = "cpu", overrides: TransformOverrides = NO_OVERRIDES, amp: str = "off"):
    """The model ready for evaluation (ellbench.models.loading.LoadedModel), built for --img-size when given, run
    under `amp` autocast (off, bf16, fp16)."""
    from ellbench.models.loading import load_for_eval

    return load_for_eval(name, checkpoint, pretrained=pretrained, dataset=dataset, seed=seed, device=device,
                         input_size=overrides.img_size, amp=amp)


def eval_transform(loaded, overrides: TransformOverrides = NO_OVERRIDES):
    """The model's own eval transform for image folders, with the overrides applied (an EvalTransform)."""
    from ellbench.data.transforms import model_eval_transform

    return model_eval_transform(loaded.timm_model, img_size=overrides.img_size, crop_pct=overrides.crop_pct,
                                interpolation=overrides.interpolation)


def open_model_and_data(name: str, data: str, *, checkpoint: str | None = None, pretrained: bool = False,
                        data_root: str | None = None, limit: int | None = None, skip_bad_images: bool = False,
                        overrides: TransformOverrides = NO_OVERRIDES, seed: int = 0, device: str = "cpu",
                        amp: str = "off", labels: bool = True):
    """(LoadedModel, data set) for `data`: a built-in set's name or an ImageNet-style folder.

    Folder: the model first, then the folder through its eval transform. Built-in set: the set first (served as
    stored, so transform overrides are an error), then the model sized for it when it has no weights of its own,
    and one image through the model so that a model that cannot take the set's images says so in one line.
    With `labels` (all but label-free measurements such as collapse) the data's classes must fit the model's outputs.
    """
    from ellbench.data import check_folder, is_builtin, open_dataset

    if is_builtin(data):
        if overrides.given():
            raise EllbenchError(f"{', '.join(overrides.given())} set the eval transform of image folders; the built-in "
                                f"set {data} is used as stored")
        dataset = open_dataset(data, "test", root=data_root, limit=limit)
        loaded = load_model(name, checkpoint=checkpoint, pretrained=pretrained, dataset=dataset, seed=seed,
                            device=device, amp=amp)
        check_model_takes(loaded, dataset)
        if labels:
            check_classes(loaded, dataset)
        return loaded, dataset
    check_folder(data)  # a bad path fails before the model is built
    loaded = load_model(name, checkpoint=checkpoint, pretrained=pretrained, seed=seed, device=device,
                        overrides=overrides, amp=amp)
    transform = eval_transform(loaded, overrides)
    check_model_input(loaded, transform.input_size, "the size its eval transform makes of the folder's images")
    dataset = open_dataset(data, "test", root=data_root, limit=limit, skip_bad_images=skip_bad_images,
                           transform=transform)
    if labels:
        check_classes(loaded, dataset)
    return loaded, dataset


def _built_side(module) -> int | None:
    """The input side a fixed-size model (a ViT) was built for, or None for a size-agnostic one."""
    patch_embed = getattr(module, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None) if getattr(patch_embed, "strict_img_size", True) else None
    return int(size[0]) if isinstance(size, tuple | list) and size else None


def _patch_side(module) -> int | None:
    size = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    return int(size[0]) if isinstance(size, tuple | list) and size else None


def check_model_input(loaded, input_size, source: str) -> None:
    """One blank image of `input_size` ((C,) H, W) through the model before any work; a model that cannot take it is
    one line that says which --img-size would fit."""
    import torch

    channels, height, width = (3, *input_size)[-3:]
    try:
        with torch.no_grad():
            loaded.module(torch.zeros(1, channels, height, width, device=loaded.device))
    except (RuntimeError, AssertionError, ValueError) as error:
        if type(error).__name__ == "OutOfMemoryError":
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        built, patch = _built_side(loaded.timm_model), _patch_side(loaded.timm_model)
        if built is not None and built != height:
            hint = f"; pass --img-size {built} (the size it was built for) or use a model built for {height} px"
        elif patch is not None and min(height, width) < patch:
            hint = f"; choose an --img-size of at least its patch size {patch}"
        else:
            hint = "; choose another --img-size or model"
        raise EllbenchError(f"{loaded.name} cannot take {height}x{width} images ({source}): {first}{hint}") from None


def check_classes(loaded, dataset) -> None:
    """The data's classes must be outputs of the model: a folder of 12 classes (or of ImageNet wnids, labels 0-999)
    cannot be scored by a 10-way head."""
    from ellbench.data.folders import ImageFolderDataset

    outputs = getattr(loaded.timm_model, "num_classes", None)
    needed = getattr(dataset, "num_classes", None)
    if not isinstance(outputs, int) or not isinstance(needed, int) or needed <= outputs:
        return
    wnids = isinstance(dataset, ImageFolderDataset) and needed == 1000
    why = "its class folders are ImageNet-1k wnids (labels 0-999)" if wnids else f"it has {needed} classes"
    raise EllbenchError(f"{dataset.name} does not fit {loaded.name}: {why}, but the model has {outputs} outputs; use a "
                        f"model (or checkpoint) with at least {needed} outputs, or a folder of at most {outputs} "
                        "classes")


def check_model_takes(loaded, dataset) -> None:
    """One example of `dataset` through the model; a model that cannot take its images is a one-line error."""
    import torch

    from ellbench.data import dataset_batch

    if not len(dataset):
        return
    images, _ = dataset_batch(dataset, [0])
    try:
        with torch.no_grad():
            logits = loaded.module(images.to(loaded.device))
    except (RuntimeError, AssertionError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EllbenchError(f"{loaded.name} cannot take {dataset.name}'s {tuple(images.shape[1:])} images: "
                            f"{first}") from None
    if logits.dim() != 2:
        raise EllbenchError(f"{loaded.name} is not a classifier: it returns {list(logits.shape)} for one image")
