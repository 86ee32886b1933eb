"""The accuracy gate: a reduced-precision model ships only if it keeps the FP32 model's top-1.

Reference and candidate are both run by ONNX Runtime on the CPU over the same held-out labelled
images (never the calibration images, see :mod:`build_engine.images`). The result (both top-1s,
the delta in percentage points, the share of images where both agree) goes into the manifest
whether the gate passes or not; :func:`enforce` raises when it does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from build_engine.errors import AccuracyGateError
from build_engine.images import LabelledBatch
from edge_agent.contract.manifest import AccuracyGate

DEFAULT_THRESHOLD_POINTS = 1.0
EVAL_BATCH = 16


def predict(onnx_path: Path, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Top-1 class ids of ``images`` under ``onnx_path`` (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(images), batch):
        logits = session.run(None, {name: images[start : start + batch]})[0]
        out.append(np.asarray(logits).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate(
    reference: Path,
    candidate: Path,
    data: LabelledBatch,
    *,
    threshold_points: float = DEFAULT_THRESHOLD_POINTS,
    reference_name: str = "fp32 onnxruntime",
) -> AccuracyGate:
    """Compare ``candidate`` with ``reference`` on ``data``; the verdict is in ``passed``."""
    if len(data) == 0:
        raise AccuracyGateError("accuracy gate has no held-out images; pass --gate-data")
    ref_pred = predict(reference, data.images)
    cand_pred = predict(candidate, data.images)
    ref_top1 = float(np.mean(ref_pred == data.labels))
    cand_top1 = float(np.mean(cand_pred == data.labels))
    delta = round((ref_top1 - cand_top1) * 100.0, 4)
    return AccuracyGate(
        reference=reference_name,
        images=len(data),
        source=data.source,
        reference_top1=ref_top1,
        candidate_top1=cand_top1,
        delta_points=delta,
        agreement=float(np.mean(ref_pred == cand_pred)),
        threshold_points=threshold_points,
        passed=delta <= threshold_points,
    )


def describe(gate: AccuracyGate, precision: str) -> str:
    """One line for the console: both top-1s, the delta and the verdict."""
    verdict = "passed" if gate.passed else "REFUSED"
    return (
        f"accuracy gate {verdict} for {precision}: top-1 {gate.candidate_top1:.2%} vs "
        f"{gate.reference} {gate.reference_top1:.2%} (delta {gate.delta_points:+.2f} points, "
        f"threshold {gate.threshold_points:g}, agreement {gate.agreement:.2%}, "
        f"{gate.images} held-out images)"
    )


def enforce(gate: AccuracyGate, precision: str) -> None:
    """Raise :class:`AccuracyGateError` when the gate failed."""
    if not gate.passed:
        raise AccuracyGateError(
            describe(gate, precision)
            + "; use --precision fp16, more --calib-size, or --fallback fp16"
        )
