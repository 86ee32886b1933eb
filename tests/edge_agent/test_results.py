from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.results import ResultError, classify, softmax, top_k


def test_softmax_stable_and_normalised() -> None:
    x = np.array([[1000.0, 999.0] + [0.0] * 8, [0.0] * 10])
    p = softmax(x)
    assert np.allclose(p.sum(axis=1), 1.0) and np.all(np.isfinite(p))
    assert p[0, 0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-9)
    assert np.allclose(p[1], 0.1)


def test_top_k_ties_lower_id_first() -> None:
    assert top_k(np.array([[0.1, 0.3, 0.3, 0.3]]), 3) == [[1, 2, 3]]


def test_classify_label_probabilities_uncertain() -> None:
    logits = np.zeros((2, 10), np.float32)
    logits[0, 5] = 10.0  # confident Barred Spiral
    logits[1, 2] = 0.5  # nearly flat: uncertain
    a, b = classify(logits, uncertain_below=0.5, k=3)
    assert a.class_id == 5 and a.label == "Barred Spiral" and not a.uncertain
    assert a.top_k[0] == (5, "Barred Spiral", a.confidence)
    assert list(a.by_name()) == list(CLASS_NAMES)
    assert b.class_id == 2 and b.uncertain and len(b.top_k) == 3


def test_bad_logits() -> None:
    with pytest.raises(ResultError, match="expected 10"):
        classify(np.zeros((1, 3)), uncertain_below=0.5)
    with pytest.raises(ResultError, match="NaN"):
        classify(np.full((1, 10), np.nan), uncertain_below=0.5)
