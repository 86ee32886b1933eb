"""The training configuration: validated strictly, resolved once and saved in the run directory.

Defaults are the paper's recipe (MobileViT-S, AdamW lr 0.002 and weight decay 0.01, learning rate
``0.002 * 0.01 ** (step / 10000)``, batch 32, up to 100 epochs with early stopping on validation
accuracy, patience 5). Dropout before the classifier is 0.2 (timm ``drop_rate``): the paper uses
dropout but does not state a rate in the text we have, so 0.2 is our choice. An unknown key is an
error (``extra="forbid"``), so a typo in a config file never silently trains something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec
from training.config_fields import StrictConfig, up_to
from training.errors import UsageError
from training.recipe_config import DistillConfig, RegulariseConfig, SurveyAugmentConfig

CONFIG_NAME = "config.json"


class AugmentConfig(StrictConfig):
    """Training-only augmentation, applied batch-wise on the training device (one grid_sample)."""

    rotate: bool = Field(default=True, description="uniform rotation over the full circle")
    flip: bool = Field(default=True, description="horizontal and vertical flips, each with p=0.5")
    zoom_min: float = Field(default=0.8, gt=0.0, description="smallest zoom factor (>1 zooms in)")
    zoom_max: float = Field(default=1.2, gt=0.0, description="largest zoom factor")
    translate: float = up_to(0.1, 0.5, "random crop: shift, share of side")
    brightness: float = up_to(0.0, 1.0, "+- additive jitter, off by default")
    contrast: float = up_to(0.0, 1.0, "+- multiplicative jitter, off by default")
    noise: float = up_to(
        0.0, 1.0, "std of Gaussian noise on [-1, 1] input (scaled to other input ranges)"
    )

    @model_validator(mode="after")
    def _zoom_order(self) -> AugmentConfig:
        if self.zoom_min > self.zoom_max:
            raise ValueError(f"zoom_min {self.zoom_min} is larger than zoom_max {self.zoom_max}")
        return self


class TrainConfig(StrictConfig):
    """Everything that decides a run. Saved as ``config.json`` and in the checkpoint metadata."""

    data: str = Field(description="Galaxy10_DECals.h5, a labels CSV or a class-folder tree")
    out: str = Field(description="run directory")
    limit: int | None = Field(default=None, ge=1, description="use this many images, spread evenly")
    model: str = Field(default="mobilevit_s", description="timm model name")
    model_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    pretrained: str | None = Field(default=None, description="None, 'hub' or a local weights file")
    num_classes: int = Field(default=10, ge=2)
    drop_rate: float = Field(default=0.2, ge=0.0, lt=1.0)
    image_size: int = Field(default=256, ge=16, le=1024)
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1, description="default: 2 x batch_size")
    lr: float = Field(default=0.002, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    lr_decay_rate: float = Field(default=0.01, gt=0.0, le=1.0)
    lr_decay_steps: int = Field(default=10000, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    grad_clip_norm: float | None = Field(
        default=None, gt=0.0, description="clip the gradient norm (not in the paper's recipe)"
    )
    patience: int = Field(default=5, ge=1)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 42
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    workers: int | None = Field(
        default=None, ge=0, description="DataLoader workers; default by device"
    )
    check_conflicts: bool = True
    progress: bool = True
    augment: AugmentConfig = Field(default=AugmentConfig())
    survey: SurveyAugmentConfig = Field(
        default=SurveyAugmentConfig(),
        description="survey variation (flux, contrast, colour, seeing, sky, noise); off by default",
    )
    regularise: RegulariseConfig = Field(
        default=RegulariseConfig(), description="EMA of the weights, mixup/cutmix; off by default"
    )
    distill: DistillConfig = Field(
        default=DistillConfig(), description="distillation from teacher runs; off by default"
    )
    preprocess: PreprocessSpec | None = Field(
        None, description="the eval transform; resolved from image_size when absent"
    )
    decode: DecodeSpec = Field(
        default=DecodeSpec(),
        description="how image files become pixels (stretch of 16-bit/float data, FITS HDU and "
        "bands); travels with the model to the bundle, and the agent decodes the same way. "
        "Runs saved before it existed decoded with these defaults",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave images for training")
        if self.preprocess is not None and self.preprocess.input_size != self.image_size:
            raise ValueError(
                f"preprocess.input_size {self.preprocess.input_size} != image_size {self.image_size}"
            )
        return self

    @property
    def spec(self) -> PreprocessSpec:
        """The inference transform the model is trained for (= what the bundle will use)."""
        return self.preprocess or DEFAULT_SPEC.model_copy(update={"input_size": self.image_size})


def config_error_line(exc: ValidationError, source: str) -> str:
    """One line naming the key path of the first problem, e.g. ``config.json: augment.zoom_min``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def make_config(values: dict[str, Any], source: str = "options") -> TrainConfig:
    """Validate ``values`` into a config, raising :class:`UsageError` with one line."""
    try:
        config = TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise UsageError(config_error_line(exc, source)) from exc
    return config.model_copy(update={"preprocess": config.spec})


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)


def config_from_json(text: str, source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate_json(text)
    except ValidationError as exc:
        raise UsageError(config_error_line(exc, source)) from exc


def save_config(config: TrainConfig, run_dir: Path) -> Path:
    path = Path(run_dir) / CONFIG_NAME
    path.write_text(config_to_json(config) + "\n", encoding="utf-8")
    return path


def load_config(path: Path) -> TrainConfig:
    """Read a saved ``config.json`` (or a user's config file) strictly."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read config ({exc.strerror})") from exc
    return config_from_json(text, str(path))
