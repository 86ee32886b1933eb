"""Calibrated confidence: temperature scaling, its error figures and where the temperature lives.

A network trained with cross-entropy is usually overconfident: of the images it gives 0.9,
fewer than 90% are right. Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", 2017) divides the logits by one scalar ``T`` fitted on held-out images (the run's
validation split) by minimising the negative log-likelihood. It changes no prediction (the
argmax of ``logits / T`` is the argmax of ``logits``), only the probabilities.

Figures, before and after, on the validation split and the test split:

- ECE, expected calibration error: the images are put into ``bins`` equal-width bins of
  confidence (the top probability); ECE is the image-weighted mean of ``|accuracy - mean
  confidence|`` over the bins. 0 is perfect; 0.1 means confidence is off by 10 points on average.
- NLL (mean negative log-likelihood of the true class) and the Brier score (mean squared error
  of the probability vector against the one-hot label).

Where ``T`` is stored: in the metadata of ``best.safetensors`` under :data:`CALIBRATION_KEY`
(beside the training config, so the weights file alone carries it; the recorded sha256 is
rewritten with it), in ``metrics.json`` under ``calibration``, and from there in the ONNX
metadata and the bundle manifest (:class:`edge_agent.contract.manifest.Calibration`). The agent
reports ``softmax(logits / T)``.

No torch or matplotlib at import: ``build-engine`` reads the record before it pays for either.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from edge_agent.contract.manifest import Calibration
from training.errors import CheckpointError, TrainingError
from training.weights import record_weights, verify_weights

if TYPE_CHECKING:
    import torch

    from edge_agent.contract.labelled_data import LabelledImages
    from edge_agent.contract.preprocess import PreprocessSpec
    from training.split import Split

CALIBRATION_KEY = "galaxy_edge_calibration"
RELIABILITY_NAME = "reliability.png"
DEFAULT_BINS = 15
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T from 0.018 to 55, far beyond what a
# classifier that learned anything needs; the bound is only hit by degenerate inputs.
LOG_T_BOUND = 4.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

Echo = Callable[[str], None]


class CalibrationError(TrainingError):
    """Logits, labels or a run that temperature scaling cannot be fitted on or stored in."""


# --- the numbers ------------------------------------------------------------------------------


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


def reliability_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    temperature: float,
    bins: int,
    path: Path,
) -> Path:
    """Reliability diagram: per set (validation, test), accuracy against confidence per bin,
    before and after temperature scaling, with the diagonal of perfect calibration and the ECE.

    ``curves`` maps a set's name to (probabilities before, probabilities after, labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 5), squeeze=False)
    width = 1.0 / bins
    for ax, (name, (before, after, labels)) in zip(axes[0], curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        for probs, label, colour, shift in (
            (before, "softmax(z)", "tab:red", -0.22),
            (after, f"softmax(z / {temperature:.2f})", "tab:blue", 0.22),
        ):
            r = reliability_bins(probs, labels, bins)
            filled = r.counts > 0
            centres = (r.edges[:-1] + r.edges[1:]) / 2 + shift * width
            ax.bar(
                centres[filled],
                r.accuracy[filled],
                width=0.44 * width,
                color=colour,
                alpha=0.75,
                label=f"{label}: ECE {ece(probs, labels, bins):.3f}",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top probability)",
            ylabel="accuracy",
            title=f"{name} ({len(labels)} images, {bins} bins)",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --- the record in the weights file -----------------------------------------------------------


def _metadata(weights: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt safetensors file ({exc})") from exc


def read_calibration(weights: Path) -> Calibration | None:
    """The temperature recorded in a checkpoint's metadata, or None for an uncalibrated one."""
    raw = _metadata(Path(weights)).get(CALIBRATION_KEY)
    if raw is None:
        return None
    try:
        return Calibration.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CheckpointError(
            f"{weights}: metadata {CALIBRATION_KEY} does not validate ({where}: {first['msg']}); "
            "refit it with galaxy-train calibrate --checkpoint RUN --data DATA"
        ) from exc


def write_calibration(weights: Path, calibration: Calibration) -> str:
    """Store ``calibration`` in the metadata of ``weights`` and re-record its sha256.

    The weights are verified against their record first (never bless a tampered file), rewritten
    to a temporary file with the same tensors and the other metadata unchanged, renamed over
    the original, and the new hash recorded. Returns the new sha256.
    """
    from safetensors.numpy import load_file, save_file

    weights = Path(weights)
    verify_weights(weights)
    metadata = _metadata(weights)
    metadata[CALIBRATION_KEY] = calibration.model_dump_json()
    tensors = load_file(str(weights))
    tmp = weights.with_name(weights.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, weights.stat().st_mode & 0o7777)  # safetensors writes 0600
        os.replace(tmp, weights)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{weights}: cannot rewrite with its temperature ({exc})") from exc
    return record_weights(weights)


# --- a model and its splits -------------------------------------------------------------------


def predict_logits(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    device: torch.device,
    *,
    progress: bool = False,
    desc: str = "logits",
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits (no autocast: they describe the saved weights) and labels over ``loader``."""
    import torch
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch, target in tqdm(loader, desc=desc, disable=not progress, leave=False):
            logits.append(model(batch.to(device)).float().cpu().numpy())
            labels.append(np.asarray(target))
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def _part_logits(
    model: torch.nn.Module,
    images: LabelledImages,
    indices: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    workers: int,
    progress: bool,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    from training.data import PreprocessedImages, make_loader

    loader = make_loader(
        PreprocessedImages(images, indices, spec),
        batch_size,
        shuffle=False,
        workers=workers,
        device=device,
        seed=0,
    )
    return predict_logits(model, loader, device, progress=progress, desc=desc)


@dataclass
class CalibrationResult:
    """The fitted record (for the weights and the manifest) and the figures (for metrics.json)."""

    calibration: Calibration
    report: dict[str, Any]


def calibrate_model(
    model: torch.nn.Module,
    images: LabelledImages,
    split: Split,
    spec: PreprocessSpec,
    *,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    bins: int = DEFAULT_BINS,
    progress: bool = False,
    out_dir: Path | None = None,
) -> CalibrationResult:
    """Fit ``T`` on the validation split; figures on validation and test; the diagram PNG."""
    if len(split.val) == 0:
        raise CalibrationError(
            "the run has no validation split to fit the temperature on; retrain with "
            "--val-fraction above 0"
        )
    parts = {"validation": split.val}
    if len(split.test):
        parts["test"] = split.test
    outputs = {
        name: _part_logits(
            model, images, idx, spec, device, batch_size, workers, progress, f"calibrate: {name}"
        )
        for name, idx in parts.items()
    }
    temperature = fit_temperature(*outputs["validation"])
    report: dict[str, Any] = {
        "method": "temperature",
        "temperature": temperature,
        "bins": bins,
        "fitted_on": "validation",
    }
    for name, (logits, labels) in outputs.items():
        report[name] = figures(logits, labels, temperature, bins)
    val, test = report["validation"], report.get("test")
    calibration = Calibration(
        temperature=temperature,
        fitted_on=f"validation split of {images.describe().get('path', 'the training data')}",
        images=int(val["images"]),
        bins=bins,
        ece_before=val["before"]["ece"],
        ece_after=val["after"]["ece"],
        test_images=int(test["images"]) if test else None,
        test_ece_before=test["before"]["ece"] if test else None,
        test_ece_after=test["after"]["ece"] if test else None,
    )
    if out_dir is not None:
        curves = {
            name: (softmax(logits, 1.0), softmax(logits, temperature), labels)
            for name, (logits, labels) in outputs.items()
        }
        reliability_png(curves, temperature, bins, Path(out_dir) / RELIABILITY_NAME)
        report["figure"] = RELIABILITY_NAME
    return CalibrationResult(calibration, report)


def describe(report: dict[str, Any]) -> str:
    """One line per set: ECE, NLL and Brier before and after."""
    lines = [f"temperature T = {report['temperature']:.4f} (fitted on the validation split)"]
    for name in ("validation", "test"):
        if name in report:
            r = report[name]
            b, a = r["before"], r["after"]
            lines.append(
                f"{name} ({r['images']} images): ECE {b['ece']:.4f} -> {a['ece']:.4f} "
                f"(a perfectly calibrated model would show {r['ece_noise_floor']:.4f} here), "
                f"NLL {b['nll']:.4f} -> {a['nll']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}"
            )
    return "\n".join(lines)


def update_metrics(metrics_path: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """Put ``report`` under ``calibration`` in a run's metrics.json (None when there is none)."""
    if not metrics_path.is_file():
        return None
    try:
        metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{metrics_path}: unreadable metrics ({exc})") from exc
    metrics["calibration"] = report
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, metrics_path)
    return metrics


def calibrate_trained(
    model: torch.nn.Module,
    run_dir: Path,
    images: LabelledImages,
    split: Split,
    spec: PreprocessSpec,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    progress: bool,
    echo: Echo = print,
) -> dict[str, Any]:
    """End of training: fit, store in best.safetensors, add to metrics.json, draw the diagram.

    ``model`` holds the restored best weights (those in best.safetensors). Returns the report.
    """
    from training.checkpoint import BEST_NAME, METRICS_NAME

    result = calibrate_model(
        model,
        images,
        split,
        spec,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        out_dir=run_dir,
    )
    write_calibration(run_dir / BEST_NAME, result.calibration)
    update_metrics(run_dir / METRICS_NAME, result.report)
    echo(describe(result.report))
    return result.report


def calibrate_run(
    checkpoint: Path,
    data: Path,
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    bins: int = DEFAULT_BINS,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any]:
    """``galaxy-train calibrate``: (re)fit the temperature of an existing run directory.

    The run's ``split.json`` says which images of ``data`` are its validation and test splits;
    the weights are verified before they are read and re-recorded after the metadata changes.
    """
    from edge_agent.contract.labelled_data import open_labelled
    from training.checkpoint import METRICS_NAME, load_model_weights, resolve_weights
    from training.split import SPLIT_NAME, load_split

    weights = resolve_weights(checkpoint)
    run_dir = weights.parent
    if not (run_dir / SPLIT_NAME).is_file():
        raise CalibrationError(
            f"{run_dir / SPLIT_NAME}: missing; calibrate needs the run's split to know its "
            "validation images (pass the run directory galaxy-train wrote)"
        )
    model, config = load_model_weights(weights)
    model.to(device)
    images = open_labelled(
        data,
        limit=config.limit,
        check_conflicts=config.check_conflicts,
        decode=config.decode.decoder(),  # the pixels the run was trained on
    )
    split = load_split(run_dir / SPLIT_NAME, images.labels)
    result = calibrate_model(
        model,
        images,
        split,
        config.spec,
        device=device,
        batch_size=batch_size,
        workers=workers,
        bins=bins,
        progress=progress,
        out_dir=run_dir,
    )
    sha256 = write_calibration(weights, result.calibration)
    update_metrics(run_dir / METRICS_NAME, result.report)
    echo(describe(result.report))
    echo(f"stored T in {weights} (sha256 {sha256[:12]}…, recorded), {run_dir / RELIABILITY_NAME}")
    return result.report
