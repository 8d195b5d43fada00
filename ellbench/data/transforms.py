"""A model's own evaluation transform for image folders: timm's, with the output left in [0, 1].

Light to import (the CLI checks options with it): torch and timm load only when a transform is built or resolved.

The settings (input size, interpolation, crop_pct, crop_mode) come from timm exactly as its validate.py resolves
them (huggingface/pytorch-image-models, validate.py: `resolve_input_data_config(model, args,
use_test_size=True)`), so a model whose pretrained config names a test size (resnet18.a1_in1k: 288 px, crop 1.0) is
evaluated at it. The transform itself is timm's `create_transform(..., normalize=False)`: resize, centre crop (or
squash / border), then a uint8 tensor that is divided by 255 here. Normalisation by the model's mean and std happens
inside the model wrapper (ellbench.models.factory.NormalizedModel), as torchattacks needs [0, 1] inputs; the result
is bit for bit what timm's normalising transform gives, normalised later.
"""

from __future__ import annotations

import dataclasses

from ellbench.errors import EllbenchError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
# timm's defaults (timm.data.constants): resize 256 -> centre crop 224, bilinear; Hendrycks' ImageNet-C geometry too.
DEFAULT_INPUT_SIZE = (224, 224)
DEFAULT_CROP_PCT = 0.875
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """How an image file becomes a [3, H, W] model input in [0, 1]: timm's eval transform settings.

    `mean` only matters for crop_mode 'border', whose padding timm fills with the mean colour.
    """

    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (height, width)
    interpolation: str = "bilinear"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN

    def __post_init__(self):
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 2 or min(size) <= 0:
            raise EllbenchError(f"image size must be two positive sides, got {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise EllbenchError(f"unknown interpolation {self.interpolation!r}; choose one of "
                                f"{', '.join(INTERPOLATIONS)}")
        if not 0 < float(self.crop_pct) <= 1:
            raise EllbenchError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise EllbenchError(f"unknown crop mode {self.crop_mode!r}; choose one of {', '.join(CROP_MODES)}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))

    @classmethod
    def from_data_config(cls, config: dict) -> EvalTransform:
        """From a timm data config (resolve_data_config's dict)."""
        return cls(input_size=tuple(config["input_size"][-2:]), interpolation=config["interpolation"],
                   crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode") or "center",
                   mean=tuple(config.get("mean") or IMAGENET_DEFAULT_MEAN))

    def settings(self) -> dict:
        """The fields that decide the pixels (part of fingerprints and job keys)."""
        settings = {"input_size": list(self.input_size), "interpolation": self.interpolation,
                    "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}
        if self.crop_mode == "border":
            settings["fill_mean"] = list(self.mean)
        return settings

    def describe(self) -> str:
        """One line for reports: 'timm eval 224x224 bicubic crop_pct 0.9 center'."""
        height, width = self.input_size
        return f"timm eval {height}x{width} {self.interpolation} crop_pct {self.crop_pct:g} {self.crop_mode}"

    def slug(self) -> str:
        """The settings as a short file-name-safe string (cache folder names)."""
        height, width = self.input_size
        fill = "-fill" + "_".join(f"{m:g}" for m in self.mean) if self.crop_mode == "border" else ""
        return f"{height}x{width}-{self.interpolation}-crop{self.crop_pct:g}-{self.crop_mode}{fill}"

    def timm_transform(self):
        """timm's eval transform with these settings, ending in a uint8 [3, H, W] tensor (no normalisation)."""
        from timm.data import create_transform

        return create_transform(input_size=(3, *self.input_size), is_training=False,
                                interpolation=self.interpolation, crop_pct=self.crop_pct, crop_mode=self.crop_mode,
                                mean=self.mean, normalize=False)

    def pixels(self, image):
        """A PIL RGB image resized and cropped: uint8 [H, W, 3]."""
        return _timm_transform(self)(image).permute(1, 2, 0).numpy()

    def __call__(self, image):
        """A PIL RGB image -> float32 [3, H, W] in [0, 1] (a torch tensor)."""
        return _timm_transform(self)(image).float().div_(255.0)


_BUILT: dict[EvalTransform, object] = {}


def _timm_transform(transform: EvalTransform):
    """timm's transform object for these settings, built once per process (worker processes build their own)."""
    if transform not in _BUILT:
        _BUILT[transform] = transform.timm_transform()
    return _BUILT[transform]


DEFAULT_TRANSFORM = EvalTransform()


def model_eval_transform(model, *, img_size: int | None = None, crop_pct: float | None = None,
                         interpolation: str | None = None, crop_mode: str | None = None) -> EvalTransform:
    """The eval transform of a timm model (the bare timm module, not a wrapper), as validate.py resolves it.

    Overrides replace the model's own settings as validate.py's --img-size, --crop-pct, --interpolation and
    --crop-mode do. A fixed-size model (a ViT) must have been built for an overriding size first
    (ellbench.models.factory.build_model's `input_size`).
    """
    from timm.data import resolve_input_data_config

    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise EllbenchError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise EllbenchError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    args = {key: value for key, value in (("img_size", img_size), ("crop_pct", crop_pct),
                                         ("interpolation", interpolation), ("crop_mode", crop_mode))
            if value is not None}
    try:
        config = resolve_input_data_config(model, args, use_test_size=True)
    except (ValueError, AssertionError) as error:
        raise EllbenchError(f"cannot evaluate {type(model).__name__} at the asked size: {error}; pass the --img-size "
                            "it was built for, or leave --img-size out") from None
    return EvalTransform.from_data_config(config)


def released_imagenet_c_transform(model_transform: EvalTransform | None) -> EvalTransform:
    """What released ImageNet-C images (already resized and cropped to 224 px) go through for a model.

    Hendrycks' evaluation only centre-crops 224 (hendrycks/robustness, ImageNet-C/test.py), so a 224 x 224 model gets
    the files' pixels unchanged (crop_pct 1.0: no further crop). A model with another input size gets the 224 px
    images resized to its size with its own interpolation, noted as `resized` in the results: its numbers are not the
    published 224 px setting.
    """
    if model_transform is None:
        return EvalTransform(input_size=DEFAULT_INPUT_SIZE, interpolation="bilinear", crop_pct=1.0)
    return EvalTransform(input_size=model_transform.input_size, interpolation=model_transform.interpolation,
                         crop_pct=1.0, crop_mode="center", mean=model_transform.mean)
