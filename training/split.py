"""Seeded, stratified train/val/test split, written into the run directory as ``split.json``.

Every class is split in the same proportions, so rare classes (Cigar Shaped Smooth has 334 of
17,736 images) appear in validation and test. The split records a fingerprint of the labels it
was made for, so a resumed run or a later evaluation cannot silently use another data set.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import TrainingError, UsageError

SPLIT_NAME = "split.json"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    seed: int
    val_fraction: float
    test_fraction: float
    fingerprint: str
    train: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)

    def part(self, name: str) -> np.ndarray:
        if name not in PARTS:
            raise UsageError(f"unknown split part {name!r}; expected one of {', '.join(PARTS)}")
        result: np.ndarray = getattr(self, name)
        return result


def labels_fingerprint(labels: np.ndarray) -> str:
    """sha256 of the label sequence: equal sets of labels in the same order, equal fingerprint."""
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def make_split(
    labels: np.ndarray, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> Split:
    """Split item indices per class: ``round(n * fraction)`` to val and test, the rest to train.

    A class with at least 3 items gets at least one in each non-empty part, so per-class metrics
    exist for every class present.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_val = round(n * val_fraction)
        n_test = round(n * test_fraction)
        if n >= 3:
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = min(n_val, n - 1)
        n_test = min(n_test, n - 1 - n_val)
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    merged = {
        p: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for p, v in parts.items()
    }
    return Split(
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        fingerprint=labels_fingerprint(labels),
        **merged,
    )


def split_counts(split: Split, labels: np.ndarray) -> dict[str, dict[str, int]]:
    """Per-part, per-class-id counts (keys are strings for JSON)."""
    result: dict[str, dict[str, int]] = {}
    for p in PARTS:
        ids, counts = np.unique(np.asarray(labels)[split.part(p)], return_counts=True)
        result[p] = {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)}
    return result


def save_split(split: Split, labels: np.ndarray, run_dir: Path, dataset: dict[str, Any]) -> Path:
    path = Path(run_dir) / SPLIT_NAME
    doc = {
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "labels_sha256": split.fingerprint,
        "dataset": dataset,
        "counts": split_counts(split, labels),
        **{p: split.part(p).tolist() for p in PARTS},
    }
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    return path


def load_split(path: Path, labels: np.ndarray | None = None) -> Split:
    """Read ``split.json``; with ``labels``, check it was made for that very label sequence."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        split = Split(
            seed=int(doc["seed"]),
            val_fraction=float(doc["val_fraction"]),
            test_fraction=float(doc["test_fraction"]),
            fingerprint=str(doc["labels_sha256"]),
            **{p: np.asarray(doc[p], dtype=np.int64) for p in PARTS},
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: unreadable split file ({exc})") from exc
    if labels is not None and labels_fingerprint(labels) != split.fingerprint:
        raise UsageError(
            f"{path}: split was made for another data set (labels differ); "
            "use the same --data and --limit, or start a new run directory"
        )
    return split
