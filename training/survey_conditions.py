"""Fixed observing conditions a survey varies, applied to a model-input batch.

Each condition is one named, fixed strength of an effect of :mod:`training.survey_augment`
(flux, colour balance, seeing, sky level, sky noise, display stretch) or of scale, so every model
sees the same images under the same conditions (``galaxy-train shift``, :mod:`training.shift_eval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.errors import UsageError
from training.recipe_config import SurveyAugmentConfig
from training.survey_augment import SurveyDraw, apply, from_unit, to_unit

CLEAN = "clean"


@dataclass(frozen=True)
class Condition:
    """One fixed observing condition, in shares of the input range (0 black, 1 white).

    ``psf_fwhm`` is a share of the image side (0.03 of a 256-px DECaLS cut-out is 7.7 px, 2.0
    arcsec); ``zoom`` above 1 shows the galaxy larger (a closer one), below 1 smaller with black
    sky around it (a farther one).
    """

    name: str
    meaning: str
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    psf_fwhm: float = 0.0
    sky: float = 0.0
    noise: float = 0.0
    zoom: float = 1.0


CONDITIONS: tuple[Condition, ...] = (
    Condition(CLEAN, "the images as they are"),
    Condition("fainter", "flux x0.6 (a shallower exposure or a farther galaxy)", gain=(0.6,) * 3),
    Condition("brighter", "flux x1.4", gain=(1.4,) * 3),
    Condition(
        "seeing", "extra Moffat PSF of FWHM 0.03 of the side (2 arcsec at 256 px)", psf_fwhm=0.03
    ),
    Condition("sky", "sky level +0.06 of the range (moonlight, background residuals)", sky=0.06),
    Condition("noise", "Gaussian sky noise of std 0.05 of the range", noise=0.05),
    Condition(
        "colour", "band gains 1.12 / 1.0 / 0.88 (zero points, extinction)", gain=(1.12, 1.0, 0.88)
    ),
    Condition(
        "stretch", "contrast x0.7 about the image mean (another display stretch)", contrast=0.7
    ),
    Condition("smaller", "galaxy shown at 0.75 of its size, black sky around", zoom=0.75),
    Condition("larger", "galaxy shown at 1.3 of its size", zoom=1.3),
)


def by_name(names: Sequence[str]) -> tuple[Condition, ...]:
    known = {c.name: c for c in CONDITIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)


def zoom_unit(unit: torch.Tensor, zoom: float) -> torch.Tensor:
    """An N x C x H x W batch in [0, 1] magnified ``zoom`` times about its centre."""
    if zoom == 1.0:
        return unit
    n = unit.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=unit.dtype, device=unit.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom  # output -> input coordinates
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_condition(
    batch: torch.Tensor,
    condition: Condition,
    input_range: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``condition`` on an N x 3 x S x S model-input batch (values in ``input_range``), through
    the same effects as training's survey augmentation, at fixed strengths."""
    if condition.name == CLEAN:
        return batch
    n, side = batch.shape[0], batch.shape[-1]
    unit = zoom_unit(to_unit(batch.float(), input_range), condition.zoom)
    params = SurveyDraw(
        gain=torch.tensor(condition.gain, dtype=unit.dtype).repeat(n, 1),
        contrast=torch.full((n,), condition.contrast),
        psf_fwhm=torch.full((n,), condition.psf_fwhm * side),
        sky=torch.full((n,), condition.sky),
        noise=torch.full((n,), condition.noise),
    )
    config = SurveyAugmentConfig(psf_profile="moffat")
    return from_unit(apply(unit, params, config, generator), input_range)
