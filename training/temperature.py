"""Temperature scaling: the fit of ``T`` and the error figures before and after.

A network trained with cross-entropy is usually overconfident: of the images it gives 0.9,
fewer than 90% are right. Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", 2017) divides the logits by one scalar ``T`` fitted on held-out images by minimising
the negative log-likelihood. It changes no prediction (the argmax of ``logits / T`` is the argmax
of ``logits``), only the probabilities.

- ECE, expected calibration error: the images are put into ``bins`` equal-width bins of
  confidence (the top probability); ECE is the image-weighted mean of ``|accuracy - mean
  confidence|`` over the bins. 0 is perfect; 0.1 means confidence is off by 10 points on average.
- NLL (mean negative log-likelihood of the true class) and the Brier score (mean squared error
  of the probability vector against the one-hot label).

NumPy only: no torch or matplotlib at import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.errors import TrainingError

DEFAULT_BINS = 15
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 0.018 to 55, far beyond what a
# classifier that learned anything needs; the bound is only hit by degenerate inputs.
LOG_T_BOUND = 4.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class CalibrationError(TrainingError):
    """Logits, labels or a run that temperature scaling cannot be fitted on or stored in."""


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y):
        raise CalibrationError(
            f"need N x C logits and N labels, got shapes {z.shape} and {y.shape}"
        )
    if len(y) == 0:
        raise CalibrationError("no images to calibrate on: the split is empty")
    if not np.all(np.isfinite(z)):
        raise CalibrationError("logits hold NaN or infinity: the model is broken")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise CalibrationError(f"labels outside 0..{z.shape[1] - 1}")
    return z, y


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, maximum subtracted."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under ``softmax(logits / T)``."""
    z, y = _check(logits, labels)
    z = z / float(temperature)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot label."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per equal-width confidence bin: images, mean confidence, accuracy (NaN where empty)."""

    edges: np.ndarray  # bins + 1 values from 0 to 1
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Bin the images by confidence (top probability); bin i holds (edge i, edge i+1]."""
    if bins < 1:
        raise CalibrationError(f"bins must be at least 1, got {bins}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins; a confidence of exactly 0 (impossible for a softmax) joins the first.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, accuracy)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins."""
    r = reliability_bins(probs, labels, bins)
    filled = r.counts > 0
    gaps = np.abs(r.accuracy[filled] - r.confidence[filled])
    return float(np.sum(gaps * r.counts[filled]) / max(int(r.counts.sum()), 1))


def ece_noise_floor(
    probs: np.ndarray, bins: int = DEFAULT_BINS, draws: int = 200, seed: int = 0
) -> float:
    """Mean ECE of a perfectly calibrated model with these probabilities on this many images.

    Labels are drawn from ``probs`` themselves ``draws`` times. ECE is biased upwards on small
    sets (a bin of 3 images is rarely right exactly as often as it is confident), so an ECE is
    only evidence of miscalibration where it clearly exceeds this floor.
    """
    p = np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cumulative = p.cumsum(axis=1)
    values = []
    for _ in range(draws):
        labels = (rng.random((len(p), 1)) < cumulative).argmax(axis=1)
        values.append(ece(p, labels, bins))
    return float(np.mean(values))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, tol: float = 1e-7) -> float:
    """The ``T`` that minimises :func:`nll` of ``softmax(logits / T)`` on these images.

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions minus a linear one), so it
    is unimodal in ``log T`` and a golden-section search finds its minimum to ``tol`` in log T.
    """
    z, y = _check(logits, labels)
    lo, hi = -LOG_T_BOUND, LOG_T_BOUND

    def loss(log_t: float) -> float:
        return nll(z, y, math.exp(log_t))

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2.0))


def figures(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Accuracy, ECE, NLL and Brier before (T = 1) and after (``temperature``) on one set."""
    z, y = _check(logits, labels)
    out: dict[str, Any] = {"images": len(y), "accuracy": float(np.mean(z.argmax(1) == y))}
    for name, t in (("before", 1.0), ("after", temperature)):
        p = softmax(z, t)
        out[name] = {"ece": ece(p, y, bins), "nll": nll(z, y, t), "brier": brier(p, y)}
    out["ece_noise_floor"] = ece_noise_floor(softmax(z, temperature), bins)
    return out
