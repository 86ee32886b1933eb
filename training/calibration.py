"""Calibrated confidence: temperature scaling fitted on a trained model and stored in its run.

``T`` is fitted on the run's validation split (:mod:`training.temperature` holds the fit and the
figures: ECE, NLL, Brier), with figures before and after on the validation and test splits.

Where ``T`` is stored: in the metadata of ``best.safetensors`` under :data:`CALIBRATION_KEY`
(:mod:`training.calibration_record`), in ``metrics.json`` under ``calibration`` and beside it
``reliability.png`` (:mod:`training.calibration_report`), and from there in the ONNX metadata
and the bundle manifest (:class:`edge_agent.contract.manifest.Calibration`). The agent reports
``softmax(logits / T)``.

No torch or matplotlib at import: ``build-engine`` reads the record before it pays for either.
The names of the modules above are re-exported here, where they were first defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.contract.manifest import Calibration
from training.calibration_record import CALIBRATION_KEY, read_calibration, write_calibration
from training.calibration_report import (
    RELIABILITY_NAME,
    describe,
    reliability_png,
    update_metrics,
)
from training.temperature import (
    DEFAULT_BINS,
    LOG_T_BOUND,
    CalibrationError,
    ReliabilityBins,
    brier,
    ece,
    ece_noise_floor,
    figures,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
)

if TYPE_CHECKING:
    import torch

    from edge_agent.contract.labelled_data import LabelledImages
    from edge_agent.contract.preprocess import PreprocessSpec
    from training.split import Split

__all__ = [
    "CALIBRATION_KEY",
    "DEFAULT_BINS",
    "LOG_T_BOUND",
    "RELIABILITY_NAME",
    "CalibrationError",
    "CalibrationResult",
    "ReliabilityBins",
    "brier",
    "calibrate_model",
    "calibrate_run",
    "calibrate_trained",
    "describe",
    "ece",
    "ece_noise_floor",
    "figures",
    "fit_temperature",
    "nll",
    "predict_logits",
    "read_calibration",
    "reliability_bins",
    "reliability_png",
    "softmax",
    "update_metrics",
    "write_calibration",
]

Echo = Callable[[str], None]


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
