"""Repeated stratified k-fold on a labelled set, and the paired comparison of two configs on it.

A config is kept over the baseline only when it helps by more than the noise: the mean paired
difference over the J = k x repeats runs must have its 95% interval above zero. The interval
uses Nadeau and Bengio's corrected resampled t-test (Machine Learning 52, 2003): the training
sets of different folds overlap, so the differences are correlated and the plain standard error
``s / sqrt(J)`` is too small; the corrected one is ``s * sqrt(1 / J + n_test / n_train)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from training.errors import UsageError
from training.split import Split, labels_fingerprint, make_split
from training.variants import BASELINE


@dataclass(frozen=True)
class Fold:
    """One (repeat, fold) of a repeated stratified k-fold, as item indices of the labelled set."""

    repeat: int
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.index}"

    def split(self, labels: np.ndarray, seed: int, val_fraction: float, folds: int) -> Split:
        return Split(
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=1.0 / folds,
            fingerprint=labels_fingerprint(labels),
            train=self.train,
            val=self.val,
            test=self.test,
        )


def stratified_folds(
    labels: np.ndarray, folds: int, repeats: int = 1, seed: int = 0, val_fraction: float = 0.1
) -> list[Fold]:
    """``repeats`` shufflings of ``folds`` stratified, disjoint test parts that cover every item.

    Within a repeat, each class is shuffled and dealt round-robin into the folds, so every fold
    holds each class's share to within one image. The non-test items of a fold are split per
    class into validation (``val_fraction``) and training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if folds < 2:
        raise UsageError(f"--folds {folds}: k-fold needs at least 2 folds")
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: needs at least 1")
    smallest = int(np.bincount(labels)[np.unique(labels)].min()) if len(labels) else 0
    if smallest < folds:
        raise UsageError(
            f"a class has only {smallest} images, fewer than --folds {folds}; use fewer folds"
        )
    result: list[Fold] = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        assignment = np.empty(len(labels), dtype=np.int64)
        offset = 0
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            members = members[rng.permutation(len(members))]
            # Round-robin from a rotating start, so the folds with one image more vary by class.
            assignment[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)
        for f in range(folds):
            test = np.flatnonzero(assignment == f)
            rest = np.flatnonzero(assignment != f)
            inner = make_split(labels[rest], seed * 7919 + r * 101 + f, val_fraction, 0.0)
            result.append(
                Fold(
                    r, f, train=np.sort(rest[inner.train]), val=np.sort(rest[inner.val]), test=test
                )
            )
    return result


@dataclass(frozen=True)
class Comparison:
    """A variant against the baseline on one metric, over the runs both finished (paired)."""

    variant: str
    baseline: str
    metric: str
    runs: int
    mean_diff: float
    std_diff: float
    corrected_se: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.runs < 2 or not math.isfinite(self.corrected_se):
            return "too few runs"
        if self.low > 0:
            return "helps"
        if self.high < 0:
            return "hurts"
        return "within noise"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "verdict": self.verdict}


def compare_paired(
    baseline: ArrayLike,
    variant: ArrayLike,
    test_share: float,
    *,
    names: tuple[str, str] = (BASELINE, "variant"),
    metric: str = "accuracy",
    confidence: float = 0.95,
) -> Comparison:
    """Mean paired difference ``variant - baseline`` with its corrected interval.

    ``test_share``: n_test / n of one fold (1 / k); the correction uses n_test / n_train.
    """
    from scipy.stats import t as student_t

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(variant, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired results need the same runs")
    diff = b - a
    j = len(diff)
    mean = float(diff.mean()) if j else float("nan")
    if j < 2:
        std = se = low = high = float("nan")
    else:
        std = float(diff.std(ddof=1))
        ratio = test_share / (1.0 - test_share)
        se = std * math.sqrt(1.0 / j + ratio)
        half = float(student_t.ppf(0.5 + confidence / 2.0, j - 1)) * se
        low, high = mean - half, mean + half
    return Comparison(names[1], names[0], metric, j, mean, std, se, low, high)
