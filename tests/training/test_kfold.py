"""Repeated stratified k-fold: disjoint stratified folds, paired comparison that sees real gains."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import UsageError
from training.kfold import compare_paired, stratified_folds


def _labels() -> np.ndarray:
    counts = {0: 23, 3: 17, 7: 11, 9: 31}
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return np.random.default_rng(0).permutation(labels)


def test_folds_are_disjoint_cover_everything_and_are_stratified() -> None:
    labels = _labels()
    plan = stratified_folds(labels, folds=5, repeats=3, seed=1, val_fraction=0.1)
    assert len(plan) == 15 and len({f.name for f in plan}) == 15
    for r in range(3):
        tests = [f.test for f in plan if f.repeat == r]
        joined = np.concatenate(tests)
        assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
        for cls in np.unique(labels):
            per_fold = [int((labels[t] == cls).sum()) for t in tests]
            assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)
    for f in plan:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == len(labels)
        assert set(np.unique(labels[f.val])) == set(np.unique(labels))  # every class validated
    # Repeats reshuffle: the first fold of each repeat differs.
    firsts = [f.test for f in plan if f.index == 0]
    assert not np.array_equal(firsts[0], firsts[1])
    # Same seed, same folds.
    again = stratified_folds(labels, folds=5, repeats=3, seed=1, val_fraction=0.1)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(plan, again, strict=True))


def test_too_few_images_in_a_class_for_the_folds_is_a_usage_error() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(UsageError, match="only 3 images"):
        stratified_folds(labels, folds=4)
    with pytest.raises(UsageError):
        stratified_folds(labels, folds=1)


def test_the_comparison_flags_a_real_gain_and_not_a_null_one() -> None:
    rng = np.random.default_rng(3)
    # Fold-to-fold spread of 3 points, shared by both configs on the same fold (paired).
    base = 0.55 + rng.normal(0, 0.03, 15)
    better = base + 0.04 + rng.normal(0, 0.01, 15)
    same = base + rng.normal(0, 0.01, 15)
    worse = base - 0.04 + rng.normal(0, 0.01, 15)
    assert compare_paired(base, better, 0.2).verdict == "helps"
    assert compare_paired(base, same, 0.2).verdict == "within noise"
    assert compare_paired(base, worse, 0.2).verdict == "hurts"
    assert compare_paired(base[:1], better[:1], 0.2).verdict == "too few runs"


def test_null_differences_are_rarely_called_a_gain() -> None:
    """Over many synthetic null comparisons, 'helps' comes up at most about 2.5% of the time."""
    rng = np.random.default_rng(4)
    calls = 0
    trials = 400
    for _ in range(trials):
        base = 0.5 + rng.normal(0, 0.03, 10)
        calls += compare_paired(base, base + rng.normal(0, 0.02, 10), 0.2).verdict == "helps"
    assert calls / trials < 0.05


def test_the_correction_widens_the_interval_over_the_naive_one() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.5, 0.03, 10)
    c = compare_paired(base, base + rng.normal(0.01, 0.02, 10), 0.2)
    naive = c.std_diff / np.sqrt(10)
    assert c.corrected_se == pytest.approx(c.std_diff * np.sqrt(1 / 10 + 0.25))
    assert c.corrected_se > naive
