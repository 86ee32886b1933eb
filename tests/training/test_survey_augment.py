"""Survey augmentation changes what varies across a survey and keeps what says the class."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from training.config import AugmentConfig, make_config
from training.data import augment_batch
from training.recipe_config import SurveyAugmentConfig
from training.survey_augment import (
    FWHM_PER_SIGMA,
    SurveyDraw,
    apply,
    convolve_per_image,
    draw,
    psf_kernels,
    survey_augment,
)


def _blob(n: int = 1, side: int = 48, sigma: float = 4.0, peak: float = 0.6) -> torch.Tensor:
    """Radially symmetric Gaussian blobs on a 0.2 sky, centred between pixels (exact D4 symmetry),
    as a share of the range (N x 3 x S x S in [0, 1])."""
    c = (side - 1) / 2.0
    yy, xx = torch.meshgrid(torch.arange(side) - c, torch.arange(side) - c, indexing="ij")
    image = 0.2 + peak * torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return image.expand(n, 3, side, side).clone()


def _second_moment(image: torch.Tensor) -> float:
    """Variance along x of a 2-D light distribution (H x W, sky already removed)."""
    w = image.shape[-1]
    x = torch.arange(w, dtype=torch.float64)
    profile = image.double().sum(0)
    mean = (profile * x).sum() / profile.sum()
    return float((profile * (x - mean) ** 2).sum() / profile.sum())


def _identity(n: int) -> SurveyDraw:
    return SurveyDraw(
        gain=torch.ones(n, 3),
        contrast=torch.ones(n),
        psf_fwhm=torch.zeros(n),
        sky=torch.zeros(n),
        noise=torch.zeros(n),
    )


def test_off_by_default_and_identity_parameters_change_nothing() -> None:
    config = SurveyAugmentConfig()
    assert not config.enabled
    batch = torch.rand(4, 3, 16, 16) * 2 - 1
    assert survey_augment(batch, config) is batch
    unit = (batch + 1) / 2
    torch.testing.assert_close(apply(unit, _identity(4), config), unit)


def test_colour_balance_multiplies_each_band_by_its_gain() -> None:
    unit = torch.full((2, 3, 8, 8), 0.4)
    unit[:, :, 2:5, 2:5] = 0.6
    params = _identity(2)
    gains = torch.tensor([[0.9, 1.0, 1.1], [1.2, 0.8, 1.05]])
    params = SurveyDraw(gains, params.contrast, params.psf_fwhm, params.sky, params.noise)
    out = apply(unit, params, SurveyAugmentConfig())
    torch.testing.assert_close(out, unit * gains.view(2, 3, 1, 1))


def test_drawn_colour_gains_stay_within_their_bound_and_differ_per_band() -> None:
    config = SurveyAugmentConfig(p_colour=1.0, colour=0.1)
    gen = torch.Generator().manual_seed(0)
    params = draw(500, 32, config, torch.device("cpu"), gen)
    assert float(params.gain.min()) >= 0.9 and float(params.gain.max()) <= 1.1
    assert float((params.gain[:, 0] - params.gain[:, 1]).abs().mean()) > 0.02  # bands differ
    torch.testing.assert_close(params.contrast, torch.ones(500))  # p_contrast = 0: untouched
    assert float(params.psf_fwhm.abs().max()) == 0.0


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_each_effect_is_drawn_with_its_probability(p: float) -> None:
    config = SurveyAugmentConfig(p_sky=p, sky_level=0.05)
    gen = torch.Generator().manual_seed(1)
    params = draw(4000, 32, config, torch.device("cpu"), gen)
    share = float((params.sky != 0).float().mean())
    assert abs(share - p) < 0.03


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
def test_psf_kernels_are_normalised_symmetric_and_of_the_requested_fwhm(profile: str) -> None:
    fwhm = torch.tensor([0.0, 3.0, 6.0])
    kernels = psf_kernels(fwhm, radius=15, profile=profile, beta=3.5)
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(3))
    assert float(kernels[0, 15, 15]) == pytest.approx(1.0)  # FWHM 0: the identity
    for k in kernels:
        torch.testing.assert_close(k, torch.rot90(k, 1, (0, 1)))
        torch.testing.assert_close(k, k.flip(1))
    # Half the peak at FWHM / 2 from the centre (interpolated along the row).
    for i, width in ((1, 3.0), (2, 6.0)):
        row = kernels[i, 15, 15:].double()
        half = float(row[0]) / 2
        j = int((row < half).nonzero()[0])
        crossing = j - 1 + float((row[j - 1] - half) / (row[j - 1] - row[j]))
        assert crossing == pytest.approx(width / 2, abs=0.15)


def test_gaussian_seeing_widens_a_point_source_by_the_expected_sigma() -> None:
    side = 41
    point = torch.zeros(1, 3, side, side)
    point[0, :, 20, 20] = 1.0
    fwhm = 2.0 * FWHM_PER_SIGMA  # sigma 2 px
    out = convolve_per_image(point, psf_kernels(torch.tensor([fwhm]), radius=10))
    assert _second_moment(out[0, 0]) == pytest.approx(4.0, rel=0.02)
    # A source of sigma 3 px comes out with sigma sqrt(3^2 + 2^2): seeing adds in quadrature.
    source = _blob(1, side=61, sigma=3.0, peak=1.0) - 0.2
    out = convolve_per_image(source, psf_kernels(torch.tensor([fwhm]), radius=10))
    assert _second_moment(out[0, 1]) == pytest.approx(13.0, rel=0.02)
    assert float(out.sum()) == pytest.approx(float(source.sum()), rel=1e-4)  # flux kept


def test_each_image_gets_its_own_psf() -> None:
    side = 41
    point = torch.zeros(2, 3, side, side)
    point[:, :, 20, 20] = 1.0
    fwhm = torch.tensor([1.0, 3.0]) * FWHM_PER_SIGMA
    out = convolve_per_image(point, psf_kernels(fwhm, radius=12))
    assert _second_moment(out[0, 2]) == pytest.approx(1.0, rel=0.03)
    assert _second_moment(out[1, 2]) == pytest.approx(9.0, rel=0.02)


def test_added_noise_has_the_requested_sky_noise_in_model_units() -> None:
    config = SurveyAugmentConfig(p_noise=1.0, noise_max=0.05)
    params = _identity(4)
    noise = torch.tensor([0.0, 0.01, 0.03, 0.05])
    params = SurveyDraw(params.gain, params.contrast, params.psf_fwhm, params.sky, noise)
    unit = torch.full((4, 3, 96, 96), 0.5)
    gen = torch.Generator().manual_seed(2)
    out = apply(unit, params, config, gen)
    measured = (out - unit).std(dim=(1, 2, 3))
    torch.testing.assert_close(measured, noise, atol=0.0015, rtol=0.03)
    # Through survey_augment on [-1, 1] inputs, the std is the share times the range's width.
    batch = torch.zeros(64, 3, 32, 32)
    fixed = SurveyAugmentConfig(p_noise=1.0, noise_max=0.04)
    out = survey_augment(batch, fixed, torch.Generator().manual_seed(3), (-1.0, 1.0))
    # noise std uniform in [0, 0.04] per image: mean variance = 0.04^2 / 3 (of the unit range)
    var = float(((out - batch) / 2).pow(2).mean())
    assert var == pytest.approx(0.04**2 / 3, rel=0.1)


def test_sky_offset_adds_the_drawn_level_everywhere() -> None:
    params = _identity(2)
    params = SurveyDraw(
        params.gain, params.contrast, params.psf_fwhm, torch.tensor([-0.05, 0.1]), params.noise
    )
    unit = _blob(2, side=16)
    out = apply(unit, params, SurveyAugmentConfig())
    torch.testing.assert_close(
        out - unit, torch.tensor([-0.05, 0.1]).view(2, 1, 1, 1).expand_as(unit)
    )


def test_contrast_scales_deviations_from_the_image_mean() -> None:
    params = _identity(1)
    params = SurveyDraw(params.gain, torch.tensor([1.3]), params.psf_fwhm, params.sky, params.noise)
    unit = _blob(1, side=24)
    out = apply(unit, params, SurveyAugmentConfig())
    mean = unit.mean()
    torch.testing.assert_close(out, mean + (unit - mean) * 1.3)


def test_photometric_effects_keep_a_round_galaxy_round() -> None:
    """Survey variation never adds a direction: the D4 symmetry of a round blob survives."""
    config = SurveyAugmentConfig(
        p_brightness=1.0, p_contrast=1.0, p_colour=1.0, p_psf=1.0, p_sky=1.0, psf_profile="moffat"
    )
    batch = _blob(8) * 2 - 1
    out = survey_augment(batch, config, torch.Generator().manual_seed(4))
    for k in range(1, 4):
        torch.testing.assert_close(torch.rot90(out, k, (2, 3)), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flip(3), out, atol=1e-5, rtol=0)
    assert float((out - batch).abs().max()) > 0.01  # it did change the images
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_with_geometry_a_centred_round_galaxy_keeps_its_profile() -> None:
    """Rotation over the full circle and flips (training.data) then survey effects without
    blur or stretch: the radial profile of a centred round blob is what it was, times the gain."""
    geometry = AugmentConfig(zoom_min=1.0, zoom_max=1.0, translate=0.0)
    config = SurveyAugmentConfig(p_sky=1.0, sky_level=0.05)
    batch = _blob(6) * 2 - 1
    gen = torch.Generator().manual_seed(5)
    turned = augment_batch(batch, geometry, gen)
    out = survey_augment(turned, config, gen)
    offset = (out - batch).mean(dim=(1, 2, 3), keepdim=True)
    inner = slice(8, 40)  # bilinear sampling of the far corners differs; the galaxy does not
    torch.testing.assert_close(
        out[..., inner, inner], (batch + offset)[..., inner, inner], atol=0.02, rtol=0
    )


def test_train_config_holds_the_survey_block_strictly() -> None:
    values = {"data": "d", "out": "o", "survey": {"p_psf": 0.5, "psf_profile": "moffat"}}
    config = make_config(values)
    assert config.survey.p_psf == 0.5 and config.survey.enabled
    with pytest.raises(ValidationError):
        SurveyAugmentConfig(p_psf=1.5)
    with pytest.raises(ValidationError):
        SurveyAugmentConfig(psf_profile="airy")
    assert not make_config({"data": "d", "out": "o"}).survey.enabled
    assert math.isclose(SurveyAugmentConfig().psf_fwhm_max, 0.02)
