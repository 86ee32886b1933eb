"""Temperature scaling: the fit recovers a known T, and the error figures are right."""

from __future__ import annotations

import numpy as np
import pytest

from training.temperature import (
    CalibrationError,
    ece,
    ece_noise_floor,
    figures,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
)


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``T * u`` whose labels are drawn from ``softmax(u)``: T is the true temperature."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.5, (n, 10))
    p = softmax(u)
    labels = (rng.random((n, 1)) < p.cumsum(axis=1)).argmax(axis=1)
    return u * temperature, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0, 3.5])
def test_the_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = sampled(20000, true_t)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.04)
    # it is the minimum of the NLL: either side is worse
    assert nll(logits, labels, fitted) < nll(logits, labels, fitted * 1.1)
    assert nll(logits, labels, fitted) < nll(logits, labels, fitted / 1.1)


def test_ece_of_a_calibrated_set_is_near_zero_and_of_an_overconfident_one_is_not() -> None:
    logits, labels = sampled(20000, 1.0, seed=1)
    assert ece(softmax(logits), labels) < 0.015
    overconfident = softmax(logits * 3.0)  # same predictions, sharper probabilities
    assert ece(overconfident, labels) > 0.1
    assert ece(softmax(logits * 3.0, 3.0), labels) < 0.015


def test_ece_by_hand() -> None:
    # two bins; bin (0.5, 1]: confidences 0.9 and 0.7, one right -> |0.5 - 0.8| = 0.3;
    # bin (0, 0.5]: confidence 0.4, right -> |1 - 0.4| = 0.6; ECE = (2 * 0.3 + 0.6) / 3 = 0.4
    probs = np.array([[0.9, 0.1, 0.0], [0.3, 0.7, 0.0], [0.4, 0.3, 0.3]])
    labels = np.array([0, 0, 0])
    assert ece(probs, labels, bins=2) == pytest.approx(0.4)
    r = reliability_bins(probs, labels, bins=2)
    assert r.counts.tolist() == [1, 2]
    assert r.confidence.tolist() == pytest.approx([0.4, 0.8])
    assert r.accuracy.tolist() == pytest.approx([1.0, 0.5])


def test_temperature_changes_no_prediction_and_figures_say_before_and_after() -> None:
    logits, labels = sampled(3000, 2.5, seed=2)
    t = fit_temperature(logits, labels)
    assert np.array_equal(softmax(logits, t).argmax(1), logits.argmax(1))
    f = figures(logits, labels, t)
    assert f["images"] == 3000
    assert f["after"]["ece"] < f["before"]["ece"]
    assert f["after"]["nll"] < f["before"]["nll"]
    assert f["after"]["brier"] < f["before"]["brier"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        fit_temperature(np.zeros((0, 10)), np.zeros(0))
    with pytest.raises(CalibrationError, match="NaN"):
        fit_temperature(np.full((2, 10), np.nan), np.zeros(2))
    with pytest.raises(CalibrationError, match="labels outside"):
        fit_temperature(np.zeros((2, 10)), np.array([0, 10]))


def test_the_noise_floor_is_what_a_calibrated_model_shows_on_so_few_images() -> None:
    logits, labels = sampled(100, 1.0, seed=3)
    probs = softmax(logits)
    floor = ece_noise_floor(probs)
    assert 0.03 < floor < 0.2  # 100 images in 15 bins: far from 0 though perfectly calibrated
    big_logits, _ = sampled(20000, 1.0, seed=3)
    assert ece_noise_floor(softmax(big_logits), draws=5) < 0.015
    assert "ece_noise_floor" in figures(logits, labels, 1.0)
