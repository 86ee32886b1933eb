"""The accuracy gate: a reduced-precision model ships only if it keeps the FP32 model's top-1.

Reference and candidate are both run by ONNX Runtime on the CPU over the same held-out labelled
images (never the calibration images, see :mod:`build_engine.images`). Because the images are
the same, the two accuracies are paired: the gate computes the difference candidate minus
reference with a two-sided 90% interval (:mod:`build_engine.paired_interval`, Newcombe's
method for paired proportions), whose lower end is a one-sided 95% lower bound.

Rule: the candidate passes when that lower bound is at or above ``-threshold`` points, that is
when the data show, at 95% confidence, that the candidate loses less than ``threshold`` points
of top-1. A gate set smaller than ``min_images`` (default 200) is refused before anything runs:
one image of ten is already ten points. The result (both top-1s, the discordant pairs, the
interval, the rule and a sentence on what could and could not be shown) goes into the log and
the manifest whether the gate passes or not; :func:`enforce` raises when it does not.

What the rule means in numbers, at a top-1 of about 60% and a 1.0-point threshold: 200 images
pass only a candidate that agrees with the reference on every image (bound -0.86 points; at a
top-1 of 90% not even that, -1.34, because the interval is wider near the ends of [0, 1]);
500 images still pass two discordant pairs each way (-0.74); 1000 resolve about half a point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from build_engine.errors import AccuracyGateError, GateDataError
from build_engine.images import LabelledBatch
from build_engine.paired_interval import METHOD, PairedTable, difference_interval
from build_engine.progress import bar
from edge_agent.contract.manifest import AccuracyGate

DEFAULT_THRESHOLD_POINTS = 1.0
DEFAULT_MIN_IMAGES = 200
INTERVAL_LEVEL = 0.90  # two-sided; its lower end is the one-sided 95% bound the rule uses
EVAL_BATCH = 16
RULE = (
    "passed when the lower end of the two-sided {level:.0%} interval of candidate minus "
    "reference top-1 (a one-sided {one_sided:.0%} lower bound) is at least -{threshold:g} points"
)


def predict(
    onnx_path: Path,
    images: np.ndarray,
    batch: int = EVAL_BATCH,
    *,
    progress: bool = False,
    desc: str = "gate",
) -> np.ndarray:
    """Top-1 class ids of ``images`` under ``onnx_path`` (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    shown = bar(desc, len(images), progress, unit="img")
    with shown:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            logits = session.run(None, {name: chunk})[0]
            out.append(np.asarray(logits).argmax(axis=1))
            shown.update(len(chunk))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def check_size(images: int, min_images: int) -> None:
    """Raise :class:`GateDataError` when a gate set of ``images`` is too small to decide on."""
    if images < min_images:
        raise GateDataError(
            f"accuracy gate needs at least {min_images} held-out images, got {images}: with "
            f"{images} images one image is {100.0 / max(images, 1):.2g} points of top-1, too "
            "coarse to decide; give more labelled images (--gate-data, --calib-data, "
            "--gate-size) or, knowingly, a lower --gate-min-images"
        )


def paired_table(ref_ok: np.ndarray, cand_ok: np.ndarray) -> PairedTable:
    return PairedTable(
        both=int(np.sum(ref_ok & cand_ok)),
        candidate_only=int(np.sum(cand_ok & ~ref_ok)),
        reference_only=int(np.sum(ref_ok & ~cand_ok)),
        neither=int(np.sum(~ref_ok & ~cand_ok)),
    )


def _finding(table: PairedTable, low: float, threshold: float, passed: bool) -> str:
    one_sided = 0.5 + INTERVAL_LEVEL / 2
    shown = (
        f"shown at {one_sided:.0%} confidence: the candidate loses at most {max(-low, 0.0):.2f} "
        f"points of top-1, within the {threshold:g}-point threshold"
        if passed
        else f"not shown: at {one_sided:.0%} confidence the candidate may lose up to "
        f"{-low:.2f} points, more than the {threshold:g}-point threshold"
    )
    return (
        f"{shown} ({table.n} images, {table.discordant} discordant: {table.reference_only} only "
        f"the reference got right, {table.candidate_only} only the candidate)"
    )


def evaluate(
    reference: Path,
    candidate: Path,
    data: LabelledBatch,
    *,
    threshold_points: float = DEFAULT_THRESHOLD_POINTS,
    min_images: int = DEFAULT_MIN_IMAGES,
    reference_name: str = "fp32 onnxruntime",
    progress: bool = False,
    candidate_predict: Callable[[np.ndarray], np.ndarray] | None = None,
) -> AccuracyGate:
    """Compare ``candidate`` with ``reference`` on ``data``; the verdict is in ``passed``.

    ``candidate_predict`` runs the candidate in the runtime that will ship it (top-1 ids of a
    batch of model inputs) when that is not ONNX Runtime, e.g. OpenVINO with a BF16 hint.
    """
    if len(data) == 0:
        raise GateDataError("accuracy gate has no held-out images; pass --gate-data")
    check_size(len(data), min_images)
    ref_pred = predict(reference, data.images, progress=progress, desc="gate: reference")
    cand_pred = (
        predict(candidate, data.images, progress=progress, desc="gate: candidate")
        if candidate_predict is None
        else candidate_predict(data.images)
    )
    ref_ok, cand_ok = ref_pred == data.labels, cand_pred == data.labels
    table = paired_table(ref_ok, cand_ok)
    low, high = difference_interval(table, INTERVAL_LEVEL)
    low_points, high_points = round(low * 100.0, 4), round(high * 100.0, 4)
    passed = low_points >= -threshold_points
    return AccuracyGate(
        reference=reference_name,
        images=len(data),
        source=data.source,
        reference_top1=float(np.mean(ref_ok)),
        candidate_top1=float(np.mean(cand_ok)),
        delta_points=round(-table.difference * 100.0, 4),
        agreement=float(np.mean(ref_pred == cand_pred)),
        threshold_points=threshold_points,
        passed=passed,
        min_images=min_images,
        both_correct=table.both,
        candidate_only_correct=table.candidate_only,
        reference_only_correct=table.reference_only,
        interval_low_points=low_points,
        interval_high_points=high_points,
        interval_level=INTERVAL_LEVEL,
        interval_method=METHOD,
        rule=RULE.format(
            level=INTERVAL_LEVEL, one_sided=0.5 + INTERVAL_LEVEL / 2, threshold=threshold_points
        ),
        finding=_finding(table, low_points, threshold_points, passed),
    )


def describe(gate: AccuracyGate, precision: str) -> str:
    """One line for the console: both top-1s, the paired interval, the verdict and its meaning."""
    verdict = "passed" if gate.passed else "REFUSED"
    interval = ""
    if gate.interval_low_points is not None and gate.interval_high_points is not None:
        interval = (
            f", candidate - reference {-gate.delta_points:+.2f} points, "
            f"{gate.interval_level or INTERVAL_LEVEL:.0%} interval "
            f"[{gate.interval_low_points:+.2f}, {gate.interval_high_points:+.2f}]"
        )
    line = (
        f"accuracy gate {verdict} for {precision}: top-1 {gate.candidate_top1:.2%} vs "
        f"{gate.reference} {gate.reference_top1:.2%}{interval} (threshold {gate.threshold_points:g}, "
        f"agreement {gate.agreement:.2%}, {gate.images} held-out images)"
    )
    return f"{line}; {gate.finding}" if gate.finding else line


def enforce(gate: AccuracyGate, precision: str) -> None:
    """Raise :class:`AccuracyGateError` when the gate failed."""
    if not gate.passed:
        raise AccuracyGateError(
            describe(gate, precision)
            + "; use --precision fp16, more --calib-size, more gate images, or --fallback fp16"
        )
