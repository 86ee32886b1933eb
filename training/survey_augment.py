"""Augmentation that models what varies across a survey, as batched tensor ops on the device.

The shared sample is the first ~100 images of each class in the file's order, so its images share
more than their class: similar depth, seeing, sky and colour calibration. A model can learn those
and fail on a random draw of the survey. Each effect here varies one of them per image:

- flux scale (brightness): exposure depth and distance, all bands alike;
- contrast: another display stretch of the same sky;
- colour balance: per-band gains (zero points, extinction);
- seeing: convolution with a PSF (Gaussian or Moffat) of a random extra FWHM;
- sky level: a background offset; sky noise: Gaussian noise of a random std.

Geometry (all rotations, flips, scale and shift) is :func:`training.data.augment_batch`, which
runs first. Values are handled as a share of the input range (0 black, 1 white) and clamped back
into it. Each effect is drawn per image with its own probability; an image that does not draw an
effect gets its identity (gain 1, FWHM 0, offset 0, noise 0), so one set of batched ops serves the
whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.recipe_config import SurveyAugmentConfig

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548


@dataclass(frozen=True)
class SurveyDraw:
    """The per-image parameters of one batch (N images, shares of the input range)."""

    gain: torch.Tensor  # N x 3: colour balance times flux scale
    contrast: torch.Tensor  # N
    psf_fwhm: torch.Tensor  # N, in pixels of the batch
    sky: torch.Tensor  # N
    noise: torch.Tensor  # N, std


def to_unit(batch: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = input_range
    return (batch - lo) / (hi - lo)


def from_unit(unit: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = input_range
    return unit * (hi - lo) + lo


def kernel_radius(fwhm_max: float, profile: str, side: int) -> int:
    """Half-width of the kernels for FWHMs up to ``fwhm_max`` px: 3 sigma for a Gaussian, 2.5
    FWHM for a Moffat's wings; never more than half the image."""
    reach = 3.0 * fwhm_max / FWHM_PER_SIGMA if profile == "gaussian" else 2.5 * fwhm_max
    return max(1, min(math.ceil(reach), side // 2 - 1))


def psf_kernels(
    fwhm: torch.Tensor, radius: int, profile: str = "gaussian", beta: float = 3.5
) -> torch.Tensor:
    """N x k x k normalised kernels (k = 2 radius + 1) of FWHM ``fwhm`` (N, pixels); 0 = delta."""
    coords = torch.arange(-radius, radius + 1, device=fwhm.device, dtype=torch.float32)
    r2 = (coords.view(1, -1) ** 2 + coords.view(-1, 1) ** 2).unsqueeze(0)  # 1 x k x k
    width = fwhm.float().clamp_min(1e-6).view(-1, 1, 1)
    if profile == "gaussian":
        sigma = width / FWHM_PER_SIGMA
        kernel = torch.exp(-r2 / (2.0 * sigma**2))
    elif profile == "moffat":
        alpha = width / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        kernel = (1.0 + r2 / alpha**2) ** (-beta)
    else:
        raise ValueError(f"unknown PSF profile {profile!r}")
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def convolve_per_image(batch: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image of N x C x H x W convolved with its own kernel (N x k x k), edges reflected."""
    n, c, h, w = batch.shape
    radius = kernels.shape[-1] // 2
    padded = F.pad(batch.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1).to(batch.dtype)  # (N C) x 1 x k x k
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def _chosen(
    n: int, p: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _uniform(
    n: int, lo: float, hi: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def draw(
    n: int,
    side: int,
    config: SurveyAugmentConfig,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> SurveyDraw:
    """Per-image parameters for a batch of ``n`` images of ``side`` pixels."""

    def factor(p: float, strength: float) -> torch.Tensor:
        value = _uniform(n, 1.0 - strength, 1.0 + strength, device, generator)
        return torch.where(_chosen(n, p, device, generator), value, torch.ones_like(value))

    def amount(p: float, lo: float, hi: float) -> torch.Tensor:
        value = _uniform(n, lo, hi, device, generator)
        return torch.where(_chosen(n, p, device, generator), value, torch.zeros_like(value))

    flux = factor(config.p_brightness, config.brightness)
    colour_on = _chosen(n, config.p_colour, device, generator).view(n, 1)
    bands = torch.rand(n, 3, device=device, generator=generator) * 2.0 - 1.0
    colour = torch.where(colour_on, 1.0 + config.colour * bands, torch.ones_like(bands))
    return SurveyDraw(
        gain=colour * flux.view(n, 1),
        contrast=factor(config.p_contrast, config.contrast),
        psf_fwhm=amount(config.p_psf, 0.0, config.psf_fwhm_max * side),
        sky=amount(config.p_sky, -config.sky_level, config.sky_level),
        noise=amount(config.p_noise, 0.0, config.noise_max),
    )


def apply(
    unit: torch.Tensor,
    params: SurveyDraw,
    config: SurveyAugmentConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The effects on an N x 3 x H x W batch in [0, 1], in the order light meets them: flux and
    colour at the source, then seeing, then the sky and its noise, then the display stretch."""
    n = unit.shape[0]
    out = unit * params.gain.view(n, 3, 1, 1).to(unit.dtype)
    if bool((params.psf_fwhm > 0).any()):
        radius = kernel_radius(
            float(params.psf_fwhm.max()), config.psf_profile, min(unit.shape[-2:])
        )
        kernels = psf_kernels(params.psf_fwhm, radius, config.psf_profile, config.moffat_beta)
        out = convolve_per_image(out, kernels)
    out = out + params.sky.view(n, 1, 1, 1)
    if bool((params.noise > 0).any()):
        noise = torch.randn(out.shape, device=out.device, generator=generator, dtype=out.dtype)
        out = out + noise * params.noise.view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * params.contrast.view(n, 1, 1, 1)
    return out.clamp(0.0, 1.0)


def survey_augment(
    batch: torch.Tensor,
    config: SurveyAugmentConfig,
    generator: torch.Generator | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Survey variation on an N x 3 x S x S model-input batch (values in ``input_range``)."""
    if not config.enabled:
        return batch
    if batch.shape[1] != 3:
        raise ValueError(f"survey augmentation needs 3 bands, got {batch.shape[1]} channels")
    params = draw(batch.shape[0], batch.shape[-1], config, batch.device, generator)
    unit = to_unit(batch.float(), input_range)
    return from_unit(apply(unit, params, config, generator), input_range)
