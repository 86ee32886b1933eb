"""The seeded stratified split: proportions per class, reproducible, saved and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.errors import TrainingError
from training.split import load_split, make_split, save_split


def _labels() -> np.ndarray:
    counts = {0: 100, 1: 200, 4: 30, 7: 51, 9: 5}  # imbalanced, like Galaxy10
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return np.random.default_rng(3).permutation(labels)


def test_every_class_is_split_in_proportion() -> None:
    labels = _labels()
    split = make_split(labels, seed=1, val_fraction=0.1, test_fraction=0.2)
    parts = [split.train, split.val, split.test]
    together = np.concatenate(parts)
    assert len(together) == len(labels) == len(np.unique(together))  # a partition
    for cls in np.unique(labels):
        n = int((labels == cls).sum())
        val, test = (labels[split.val] == cls).sum(), (labels[split.test] == cls).sum()
        assert val == max(1, round(n * 0.1)), cls
        assert test == max(1, round(n * 0.2)), cls


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = _labels()
    a, b, c = (make_split(labels, seed=s) for s in (7, 7, 8))
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a.part(part), b.part(part))
    assert not np.array_equal(a.test, c.test)


def test_saved_split_round_trips_and_rejects_other_labels(tmp_path: Path) -> None:
    labels = _labels()
    split = make_split(labels, seed=5)
    path = save_split(split, labels, tmp_path, {"kind": "test"})
    again = load_split(path, labels)
    np.testing.assert_array_equal(again.val, split.val)
    assert again.seed == 5
    with pytest.raises(TrainingError, match="another data set"):
        load_split(path, labels[::-1])
    path.write_text("{")
    with pytest.raises(TrainingError, match="unreadable split file"):
        load_split(path)
