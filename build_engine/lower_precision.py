"""The ONNX a bundle ships below FP32, each checked by the accuracy gate against the FP32 source.

- INT8 (:func:`int8_candidate`): calibrated and quantized here (:mod:`build_engine.quantize`),
  optionally with the most sensitive layers kept in float (:mod:`build_engine.sensitivity`), or
  an ONNX that is INT8 already, taken as it is (:mod:`build_engine.prequantized`). The gate's
  verdict travels in the candidate; the caller decides what a refusal means (an error, or
  ``--fallback fp16``).
- FP16 (:func:`fp16_candidate`): converted here (:mod:`build_engine.fp16`), checked against
  FP32 on a few inputs, and gated when labelled images are at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_engine import gate as gate_mod
from build_engine.images import LabelledBatch, load_calibration_and_gate
from build_engine.request import Backend, BuildRequest
from build_engine.source import ModelSource
from edge_agent.contract.manifest import AccuracyGate, Precision, Quantization
from edge_agent.contract.preprocess import PreprocessSpec


@dataclass
class Candidate:
    """The ONNX the backend will run, with how it was made and how it scored."""

    path: Path
    precision: Precision
    quantization: Quantization
    accuracy: AccuracyGate | None = None


def gate(
    request: BuildRequest,
    reference: Path,
    candidate: Path,
    data: LabelledBatch,
    precision: str,
    log: Callable[[str], None],
) -> AccuracyGate:
    """The accuracy gate of ``candidate`` against ``reference`` on ``data``, said in the log."""
    result = gate_mod.evaluate(
        reference,
        candidate,
        data,
        threshold_points=request.gate_threshold,
        min_images=request.gate_min_images,
        progress=request.progress,
    )
    log(gate_mod.describe(result, precision))
    return result


def int8_candidate(
    request: BuildRequest,
    backend: Backend,
    source: ModelSource,
    scratch: Path,
    log: Callable[[str], None],
) -> tuple[Candidate, LabelledBatch]:
    """Calibrate, quantize and gate; the gate's verdict is in the candidate's ``accuracy``."""
    from build_engine.quantize import quantize_int8

    spec = source.spec
    if request.reference is not None:  # INT8 already (galaxy-train qat): taken as it is
        from build_engine.prequantized import prequantized_candidate

        made, reference, quantized, held_out = prequantized_candidate(
            request, source.path, spec, scratch, log, decode=source.decode
        )
        gated = gate(request, reference, made, held_out, "int8", log)
        return Candidate(made, "int8", quantized, gated), held_out
    assert request.calib_data is not None
    calib, gate_data = load_calibration_and_gate(
        request.calib_data,
        request.calib_size,
        request.gate_size,
        gate_path=request.gate_data,
        spec=spec,
        decode=source.decode.decoder(),
    )
    gate_mod.check_size(len(gate_data), request.gate_min_images)
    log(f"calibrating INT8 on {len(calib)} images; gate on {len(gate_data)} held-out images")
    path = scratch / "model_int8.onnx"
    q = quantize_int8(
        source.path,
        path,
        calib.images,
        method=request.quantizer,
        calibration_method=request.calibration_method,
        high_precision="fp16" if backend == "tensorrt" else "fp32",
        progress=request.progress,
    )
    log(
        f"INT8 Q/DQ by {q.method}: {q.qdq_pairs} quantizers, {', '.join(q.excluded_ops)} kept out of INT8"
    )
    if q.note:
        log(q.note)
    kept: list[str] = []
    sensitivity = None
    if request.keep_sensitive > 0:
        from build_engine.sensitivity import keep_most_sensitive, load_sensitivity

        sensitivity_data = load_sensitivity(
            request.calib_data,
            request.sensitivity_size,
            exclude=set(calib.refs) | set(gate_data.refs),
            spec=spec,
            decode=source.decode,
        )
        kept, sensitivity = keep_most_sensitive(
            source.path,
            path,
            request.keep_sensitive,
            sensitivity_data,
            mode=request.sensitivity_mode,
            log=log,
            progress=request.progress,
        )
    quantization = Quantization.model_validate(
        {
            "method": q.method,
            "calibration_source": calib.source,
            "calibration_images": q.calibration_images,
            "excluded_ops": list(q.excluded_ops),
            "calibration_method": request.calibration_method
            if q.method == "qdq-modelopt"
            else "minmax",
            "excluded_nodes": kept,
            "sensitivity": sensitivity,
        }
    )
    accuracy = gate(request, source.path, path, gate_data, "int8", log)
    return Candidate(path, "int8", quantization, accuracy), gate_data


def fp16_candidate(
    request: BuildRequest,
    source: ModelSource,
    gate_data: LabelledBatch | None,
    scratch: Path,
    log: Callable[[str], None],
) -> Candidate:
    """Convert to FP16 (checked against FP32), and gate it when labelled images are at hand."""
    from build_engine.fp16 import convert_fp16

    path = scratch / "model_fp16.onnx"
    check = gate_data.images[:8] if gate_data is not None else _random_batch(source.spec)
    f = convert_fp16(source.path, path, check)
    log(
        f"FP16 ONNX: max |fp16 - fp32| = {f.max_abs_diff:.2e}, LayerNorm/Softmax/reductions kept FP32"
    )
    quantization = Quantization.model_validate(
        {"method": "fp16-convert", "excluded_ops": list(f.kept_float32)}
    )
    accuracy = None
    if gate_data is not None:
        accuracy = gate(request, source.path, path, gate_data, "fp16", log)
        gate_mod.enforce(accuracy, "fp16")
    return Candidate(path, "fp16", quantization, accuracy)


def _random_batch(spec: PreprocessSpec) -> np.ndarray:
    """Inputs in the model's range for the FP16 check when no labelled images were given."""
    s = spec.input_size
    pixels = np.random.default_rng(0).uniform(0.0, 255.0, (4, 3, s, s)).astype(np.float32)
    return pixels * np.float32(spec.scale) + np.float32(spec.offset)
