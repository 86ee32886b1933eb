"""Settings of the generalisation recipe: survey augmentation, mixing, EMA, distillation.

Torch-free (as :mod:`training.config`, which embeds these blocks in ``TrainConfig``). Every block
defaults to off, so a config without them trains exactly as before and an older checkpoint's
config still validates. ``training/recipes/generalise.json`` turns them on.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from training.config_fields import StrictConfig, chance, up_to


class SurveyAugmentConfig(StrictConfig):
    """What varies from one survey field to the next, applied per image on the training device.

    Each effect is drawn per image with its probability ``p_*`` (0 turns it off), with a strength
    drawn uniformly up to its bound. Pixel values are handled as a share of the input range
    (0 = black, 1 = white), so the same numbers fit any preprocessing spec.
    """

    p_brightness: float = chance("probability of a flux scale (exposure, distance)")
    brightness: float = up_to(
        0.3, 0.9, "flux scale factor drawn in [1 - b, 1 + b], all bands alike, about black"
    )
    p_contrast: float = chance("probability of a contrast (stretch) change")
    contrast: float = up_to(
        0.3,
        0.9,
        "contrast factor drawn in [1 - c, 1 + c] about the image's own mean "
        "(another display stretch)",
    )
    p_colour: float = chance("probability of a colour-balance change")
    colour: float = up_to(
        0.1,
        0.9,
        "per-band gain drawn in [1 - c, 1 + c] for each of the 3 bands (g, r, z "
        "zero points and extinction differ across a survey)",
    )
    p_psf: float = chance("probability of extra seeing")
    psf_fwhm_max: float = up_to(
        0.02,
        0.1,
        "largest extra PSF FWHM as a share of the input side, drawn in [0, max] "
        "(0.02 of a 256-pixel DECaLS cut-out is 5 px, 1.3 arcsec at 0.262 arcsec/px)",
    )
    psf_profile: str = Field(
        default="gaussian",
        pattern="^(gaussian|moffat)$",
        description="PSF kernel: 'gaussian' or 'moffat' (wider wings, as real seeing)",
    )
    moffat_beta: float = Field(
        default=3.5, gt=1.0, le=10.0, description="Moffat beta (4.765 is Kolmogorov-like)"
    )
    p_sky: float = chance("probability of a sky-level offset")
    sky_level: float = up_to(
        0.05,
        0.5,
        "sky offset drawn in [-s, s], as a share of the input range (background "
        "subtraction residuals, moonlight)",
    )
    p_noise: float = chance("probability of added sky noise")
    noise_max: float = up_to(
        0.04,
        0.5,
        "std of added Gaussian sky noise drawn in [0, max], as a share of the input "
        "range (shallower exposures)",
    )

    @property
    def enabled(self) -> bool:
        probs = (self.p_brightness, self.p_contrast, self.p_colour, self.p_psf)
        return any(p > 0 for p in (*probs, self.p_sky, self.p_noise))


class RegulariseConfig(StrictConfig):
    """Weight averaging and label mixing; label smoothing is ``TrainConfig.label_smoothing``."""

    ema_decay: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="keep an exponential moving average of the weights with this decay per "
        "optimizer step (e.g. 0.999); validation, early stopping and best.safetensors then use "
        "the average. None: off",
    )
    ema_warmup: bool = Field(
        default=True,
        description="use min(decay, (1 + n) / (10 + n)) at step n, so the early average is not "
        "dominated by the random initial weights",
    )
    mixup_alpha: float = Field(
        default=0.0, ge=0.0, description="mixup: lambda ~ Beta(a, a) blends two images; 0 off"
    )
    cutmix_alpha: float = Field(
        default=0.0,
        ge=0.0,
        description="cutmix: a box of share 1 - lambda, lambda ~ Beta(a, a), from another image",
    )
    mix_prob: float = chance("probability that a batch is mixed at all", default=1.0)
    switch_prob: float = chance(
        "with both on: probability that a mixed batch uses cutmix rather than mixup", default=0.5
    )

    @property
    def mixing(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class DistillConfig(StrictConfig):
    """Distillation from an ensemble of trained galaxy-train runs (the teachers)."""

    teachers: list[str] = Field(
        default_factory=list,
        description="run directories (or best.safetensors files) of the teachers; their softened "
        "probabilities are averaged. In crossval, '{fold}' and '{out}' are replaced by the fold's "
        "name and crossval's --out (a teacher variant's run on the same fold)",
    )
    temperature: float = Field(
        default=4.0, gt=0.0, le=20.0, description="softening temperature T of both softmaxes"
    )
    alpha: float = up_to(
        0.7, 1.0, "loss = alpha * T^2 * KL(teacher || student) + (1 - alpha) * cross-entropy"
    )

    @model_validator(mode="after")
    def _unique(self) -> DistillConfig:
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError("a teacher is listed twice")
        return self
