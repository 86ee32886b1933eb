"""The paired interval of the accuracy gate: a published value, edge cases and its coverage."""

from __future__ import annotations

import numpy as np
import pytest

from build_engine.paired_interval import PairedTable, difference_interval, wilson


def test_matches_the_published_newcombe_interval() -> None:
    """Fagerland, Lydersen & Laake (2017), Table 8.x: Cavo et al. (2012), 59/6/16/80:
    estimate -0.0621, Newcombe square-and-add 95% CI -0.1186 to -0.0046."""
    table = PairedTable(both=59, candidate_only=6, reference_only=16, neither=80)
    assert table.difference == pytest.approx(-0.0621, abs=5e-5)
    low, high = difference_interval(table, 0.95)
    assert low == pytest.approx(-0.1186, abs=5e-5)
    assert high == pytest.approx(-0.0046, abs=5e-5)


def test_wilson_interval_of_a_known_case() -> None:
    """Wilson (1927) for 0 of 10 at 95%: [0, 0.2775]."""
    low, high = wilson(0, 10, 1.959963984540054)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_no_discordant_pairs_still_leaves_uncertainty() -> None:
    low, high = difference_interval(PairedTable(120, 0, 0, 80), 0.95)
    assert low < 0.0 < high  # a Wald interval would be [0, 0]: no power statement at all
    assert low == pytest.approx(-high, abs=1e-3)


def test_swapping_the_models_mirrors_the_interval() -> None:
    a = difference_interval(PairedTable(100, 7, 3, 90), 0.9)
    b = difference_interval(PairedTable(100, 3, 7, 90), 0.9)
    assert a[0] == pytest.approx(-b[1]) and a[1] == pytest.approx(-b[0])


def test_more_images_narrow_the_interval() -> None:
    widths = [
        np.subtract(*difference_interval(PairedTable(6 * k, k, k, 2 * k), 0.9)[::-1])
        for k in (10, 40, 160)
    ]
    assert widths[0] > widths[1] > widths[2] > 0


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5])
def test_bad_confidence_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        difference_interval(PairedTable(1, 0, 0, 1), bad)


def test_coverage_is_close_to_nominal() -> None:
    """Simulated gates of 200 images (accuracy about 0.6, 3% discordant, a true drop of one
    point): the 90% interval covers the true difference in 88-95% of 2000 draws."""
    rng = np.random.default_rng(2026)
    n, probs = 200, np.array([0.585, 0.005, 0.015, 0.395])  # both, cand only, ref only, neither
    truth = probs[1] - probs[2]
    tables = rng.multinomial(n, probs, size=2000)
    covered = 0
    for both, cand, ref, neither in tables:
        low, high = difference_interval(PairedTable(both, cand, ref, neither), 0.9)
        covered += low <= truth <= high
    assert 0.88 <= covered / len(tables) <= 0.95
