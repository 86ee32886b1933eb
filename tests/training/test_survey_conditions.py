"""Fixed survey conditions: each does what it says, at its stated strength."""

from __future__ import annotations

import pytest
import torch

from training.errors import UsageError
from training.survey_conditions import CONDITIONS, Condition, apply_condition, by_name

RANGE = (-1.0, 1.0)


def _disc(side: int = 64, radius: float = 8.0, level: float = 0.8) -> torch.Tensor:
    """A 1 x 3 x side x side model-input batch: a flat disc of ``level`` (unit share) on black."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    inside = ((yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2) < radius**2
    unit = (inside.float() * level).expand(1, 3, side, side).clone()
    return unit * 2.0 - 1.0


def _unit(batch: torch.Tensor) -> torch.Tensor:
    return (batch + 1.0) / 2.0


def _second_moment(image: torch.Tensor) -> float:
    side = image.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    w = image / image.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    return float((w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum())


def test_clean_is_the_identity_and_flux_scales_every_band() -> None:
    batch = _disc()
    assert apply_condition(batch, by_name(["clean"])[0], RANGE) is batch
    fainter = apply_condition(batch, by_name(["fainter"])[0], RANGE)
    torch.testing.assert_close(_unit(fainter), _unit(batch) * 0.6)
    colour = apply_condition(batch, by_name(["colour"])[0], RANGE)
    peak = _unit(colour)[0, :, 32, 32]
    torch.testing.assert_close(peak, torch.tensor([1.12, 1.0, 0.88]) * 0.8)


def test_sky_offsets_and_noise_has_its_std_and_is_reproducible() -> None:
    blank = torch.full((4, 3, 64, 64), -0.5)  # unit 0.25, far from both clamps
    sky = apply_condition(blank, by_name(["sky"])[0], RANGE)
    torch.testing.assert_close(_unit(sky), torch.full_like(blank, 0.31))
    noise = by_name(["noise"])[0]
    a = apply_condition(blank, noise, RANGE, torch.Generator().manual_seed(1))
    b = apply_condition(blank, noise, RANGE, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert float((_unit(a) - 0.25).std()) == pytest.approx(0.05, rel=0.03)


def test_seeing_widens_a_source_and_zoom_scales_its_size() -> None:
    batch = _disc(radius=6.0)
    m0 = _second_moment(_unit(batch)[0, 0])
    seen = _unit(apply_condition(batch, by_name(["seeing"])[0], RANGE))[0, 0]
    # second moments add under convolution; a Moffat kernel has more than a Gaussian of the
    # same FWHM (0.03 x 64 = 1.92 px), whose 2-D second moment is 2 (FWHM / 2.3548)^2 = 1.33
    assert _second_moment(seen) - m0 > 2.0 * (0.03 * 64 / 2.3548) ** 2
    assert float(seen.sum()) == pytest.approx(float(_unit(batch)[0, 0].sum()), rel=0.02)
    for name, zoom in (("larger", 1.3), ("smaller", 0.75)):
        scaled = _unit(apply_condition(batch, by_name([name])[0], RANGE))[0, 0]
        # a disc's second moment grows with the square of its radius
        assert _second_moment(scaled) == pytest.approx(m0 * zoom**2, rel=0.08), name


def test_a_contrast_stretch_keeps_the_mean() -> None:
    batch = _disc() * 0.5
    out = apply_condition(batch, Condition("s", "", contrast=0.7), RANGE)
    assert float(_unit(out).mean()) == pytest.approx(float(_unit(batch).mean()), rel=1e-4)
    assert float(_unit(out).std()) == pytest.approx(0.7 * float(_unit(batch).std()), rel=1e-3)


def test_an_unknown_condition_is_a_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown condition.*seeing"):
        by_name(["seing"])
    assert CONDITIONS[0].name == "clean"
