"""Which precision an OpenVINO bundle ships: the fastest on this CPU that passes the gate.

FP32 is the reference and always a candidate. BF16 (where the CPU has AMX or AVX-512 BF16) and
INT8 (the Q/DQ ONNX, when calibration images were given) are candidates only when there are
held-out labelled images to gate them on, and each runs through OpenVINO itself for the gate,
since that is what will ship. Every candidate that passes is timed on this CPU; the fastest at
the batch profile's ``opt`` size wins, and the log says which, how fast, and why the others lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_engine import gate as gate_mod
from build_engine.errors import AccuracyGateError
from build_engine.images import LabelledBatch
from build_engine.openvino_build import (
    InferencePrecision,
    Timing,
    inference_precision,
    predict,
    time_candidate,
)
from edge_agent.backends.openvino_host import OpenVinoHost
from edge_agent.contract.manifest import AccuracyGate, Precision


@dataclass
class OpenVinoCandidate:
    precision: Precision
    onnx: Path
    hint: InferencePrecision
    accuracy: AccuracyGate | None = None
    timing: Timing | None = None


@dataclass(frozen=True)
class GateSettings:
    threshold_points: float
    min_images: int
    progress: bool


def candidates(
    wanted: Precision | None,
    source: Path,
    int8: Path | None,
    gate_data: LabelledBatch | None,
    host: OpenVinoHost,
    log: Callable[[str], None],
) -> list[OpenVinoCandidate]:
    """The candidates to try: ``wanted`` alone when given, else all this host can gate."""
    if wanted is not None:
        path = int8 if wanted == "int8" else source
        assert path is not None, "int8 needs its Q/DQ model"
        return [OpenVinoCandidate(wanted, path, inference_precision(wanted, host))]
    found = [OpenVinoCandidate("fp32", source, "f32")]
    if gate_data is None:
        log(
            "openvino: no held-out labelled images to gate a lower precision on, so FP32; give "
            "--gate-data (BF16) or --calib-data (INT8 and BF16) to let build-engine try them"
        )
        return found
    if host.has_bf16:
        found.append(OpenVinoCandidate("bf16", source, "bf16"))
    else:
        log(f"openvino: no BF16 candidate: {host.cpu_name} has neither AMX nor AVX-512 BF16")
    if int8 is not None:
        found.append(OpenVinoCandidate("int8", int8, "f32"))
    return found


def gate_and_time(
    found: list[OpenVinoCandidate],
    reference: Path,
    gate_data: LabelledBatch | None,
    settings: GateSettings,
    *,
    input_size: int,
    opt: int,
    log: Callable[[str], None],
) -> None:
    """Gate every reduced-precision candidate through OpenVINO, then time those that pass."""
    for cand in found:
        if cand.precision != "fp32":
            assert gate_data is not None

            def run(images: np.ndarray, cand: OpenVinoCandidate = cand) -> np.ndarray:
                return predict(cand.onnx, cand.hint, images)

            cand.accuracy = gate_mod.evaluate(
                reference,
                cand.onnx,
                gate_data,
                threshold_points=settings.threshold_points,
                min_images=settings.min_images,
                progress=settings.progress,
                candidate_predict=run,
            )
            log(gate_mod.describe(cand.accuracy, f"openvino {cand.precision}"))
        if cand.accuracy is None or cand.accuracy.passed:
            cand.timing = time_candidate(cand.onnx, cand.hint, input_size, opt)
            log(
                f"openvino {cand.precision}: {cand.timing.ms_b1:.1f} ms/img at batch 1, "
                f"{cand.timing.ms_opt:.1f} ms/img at batch {opt} (median of 5, this CPU)"
            )


def choose(found: list[OpenVinoCandidate], log: Callable[[str], None]) -> OpenVinoCandidate:
    """The fastest candidate that passed (timed); raises when the only one asked for failed."""
    passed = [c for c in found if c.timing is not None]
    if not passed:
        refused = found[0]
        assert refused.accuracy is not None
        raise AccuracyGateError(
            f"openvino {refused.precision} refused by the accuracy gate "
            f"({refused.accuracy.finding}); build without --precision to let build-engine "
            "choose a precision that passes"
        )
    best = min(passed, key=lambda c: c.timing.ms_opt if c.timing else float("inf"))
    assert best.timing is not None
    others = []
    for cand in found:
        if cand is best:
            continue
        if cand.timing is None:
            others.append(f"{cand.precision} refused by the gate")
        else:
            others.append(f"{cand.precision} {cand.timing.ms_opt:.1f} ms/img")
    why = "the only candidate" if not others else "fastest that passed; " + ", ".join(others)
    log(
        f"openvino: shipping {best.precision.upper()} ({best.timing.ms_opt:.1f} ms/img at batch "
        f"{best.timing.opt}): {why}"
    )
    return best
