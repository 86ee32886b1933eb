"""The per-image comparison of two runs on the same test images."""

from __future__ import annotations

import numpy as np
import pytest

from training.shift_report import mcnemar


def test_mcnemar_counts_only_the_discordant_images() -> None:
    base = np.array([True] * 50 + [False] * 50)
    same = mcnemar(base, base.copy())
    assert same == {"gained": 0, "lost": 0, "p_value": 1.0}
    other = base.copy()
    other[50:60] = True  # 10 gained, none lost: p = 2 / 2**10
    result = mcnemar(base, other)
    assert (result["gained"], result["lost"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 / 2**10)
