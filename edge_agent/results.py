"""Logits to what a consumer reads: softmax probabilities, the label, top-k and ``uncertain``.

Softmax is computed in float64 with the maximum subtracted, so a large logit never overflows and
the probabilities of one frame sum to 1 to within rounding, whatever precision the model ran in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.errors import GalaxyEdgeError


class ResultError(GalaxyEdgeError):
    """Model output that cannot be read as one row of class logits per frame."""


@dataclass(frozen=True)
class Classification:
    class_id: int
    label: str
    confidence: float
    probabilities: tuple[float, ...]  # official class-id order
    top_k: tuple[tuple[int, str, float], ...]
    uncertain: bool
    calibrated: bool = False  # probabilities are softmax(logits / T) of the bundle's calibration

    def by_name(self) -> dict[str, float]:
        return dict(zip(CLASS_NAMES, self.probabilities, strict=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of an N x C array (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2:
        raise ResultError(f"logits must be N x C, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ResultError("logits hold NaN or infinity: the model or its precision is broken")
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> list[list[int]]:
    """Indices of the ``k`` largest values of each row, largest first (ties: lower id first)."""
    p = np.asarray(probabilities)
    order = np.argsort(-p, axis=1, kind="stable")
    return [row[:k].tolist() for row in order]


def classify(
    logits: np.ndarray, *, uncertain_below: float, k: int = 3, temperature: float | None = None
) -> list[Classification]:
    """One :class:`Classification` per row of ``logits`` (N x 10, official class order).

    ``temperature`` is the bundle's calibration (``manifest.calibration.temperature``): the
    probabilities are then ``softmax(logits / T)``, so ``confidence`` and ``uncertain`` are
    calibrated; None means raw softmax, flagged ``calibrated=False``.
    """
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise ResultError(f"temperature {temperature} is not a positive number")
    x = np.asarray(logits, dtype=np.float64)
    probs = softmax(x / temperature if temperature is not None else x)
    if probs.shape[1] != len(CLASS_NAMES):
        raise ResultError(
            f"model gives {probs.shape[1]} outputs per frame, expected {len(CLASS_NAMES)} classes; "
            "the bundle does not hold a Galaxy10 classifier"
        )
    k = max(1, min(k, len(CLASS_NAMES)))
    out = []
    for row, ranked in zip(probs, top_k(probs, k), strict=True):
        best = ranked[0]
        confidence = float(row[best])
        out.append(
            Classification(
                class_id=best,
                label=CLASS_NAMES[best],
                confidence=confidence,
                probabilities=tuple(float(v) for v in row),
                top_k=tuple((i, CLASS_NAMES[i], float(row[i])) for i in ranked),
                uncertain=confidence < uncertain_below,
                calibrated=temperature is not None,
            )
        )
    return out
