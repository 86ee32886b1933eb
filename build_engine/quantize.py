"""INT8 by explicit quantization: Q/DQ nodes in the ONNX, calibrated on real images.

TensorRT deprecated implicit INT8 calibrators in 10.1 and removed the precision flags in 11: an
INT8 plan comes from an ONNX whose Q/DQ nodes say where INT8 is used. Rules, all checked after
quantization by :func:`build_engine.qdq_graph.check_qdq`:

- symmetric scales, every zero point 0 (TensorRT rejects anything else);
- weights per output channel;
- LayerNormalization, Softmax and residual Add stay out of INT8: they lose accuracy there and
  TensorRT runs them in higher precision anyway. A quantizer may still let such an op read the
  output of a DequantizeLinear that it shares with a quantized neighbour (a residual branch
  that also feeds a Conv); :func:`~build_engine.qdq_graph.detach_excluded_from_dq` rewires those
  inputs to the float tensor, and :func:`~build_engine.qdq_graph.unshare_constants` gives them
  private copies of constants they share with quantized ops, so excluded ops see no INT8
  rounding at all.

The quantizer is NVIDIA ModelOpt's ONNX PTQ where it imports (it places Q/DQ by TensorRT's
fusion rules and can leave the rest in FP16, what a Jetson wants), else ONNX Runtime's
``quantize_static`` in QDQ format restricted to the compute ops. Which one ran is recorded in the
manifest and printed, never chosen silently.

On an x86 CPU, ONNX Runtime runs these symmetric (int8-activation) Q/DQ graphs slower than FP32:
its x86 build fuses DQ->Conv->Q into QLinearConv only for uint8 activations, so the Convs stay
float with extra Q/DQ passes (bench/bench_cpu_inference.py measures it). INT8 is for TensorRT.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from build_engine.errors import CalibrationError
from build_engine.export import describe_onnx, load_onnx
from build_engine.fp16 import KEEP_FLOAT32_OPS
from build_engine.progress import bar, ticking
from build_engine.qdq_graph import (
    EXCLUDED_OPS,
    check_qdq,
    detach_excluded_from_dq,
    unshare_constants,
)

# ONNX Runtime's quantizer would otherwise also wrap Reshape/Transpose/Mul... in Q/DQ pairs:
# no INT8 gain on TensorRT and many needless precision boundaries.
ORT_QUANTIZED_OPS: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 8
_EXIT_NO_MODELOPT = 4

Method = Literal["auto", "modelopt", "onnxruntime"]
# ONNX Runtime's calibrators usable for symmetric INT8 (docs/int8.md compares them on the demo).
OrtCalibration = Literal["minmax", "entropy", "percentile"]
MethodName = Literal["qdq-modelopt", "qdq-onnxruntime"]


@dataclass(frozen=True)
class QuantizeReport:
    """What was quantized, how, and with what."""

    method: MethodName
    excluded_ops: tuple[str, ...]
    calibration_images: int
    qdq_pairs: int
    detached_inputs: int
    note: str = ""


def _modelopt_without_stub_tensorrt() -> None:
    """Stop ModelOpt from using a ``tensorrt`` that is only ``tensorrt-stubs``' namespace folder.

    ModelOpt decides "TensorRT is installed" by ``import tensorrt`` succeeding, then calls
    ``trt.Logger``; the stubs package (installed for type checking) makes that import succeed
    with an empty module. Where the real TensorRT is present this changes nothing.
    """
    from modelopt.onnx import trt_utils

    from build_engine.device import import_tensorrt

    if import_tensorrt() is None:
        trt_utils.TRT_PYTHON_AVAILABLE = False


def _quantize_modelopt(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    calibration_method: str,
    high_precision: str,
    input_name: str,
    progress: bool = False,
) -> str | None:
    """Run ModelOpt in a child Python process.

    ModelOpt patches ONNX Runtime's quantization classes and its own logging process-wide and
    for good (``ort_patching.patch_ort_modules``); ORT's ``quantize_static`` misbehaves after
    that. A child process keeps this process's onnxruntime as it was (and frees ModelOpt's
    memory when it exits). Returns why ModelOpt cannot be used here, or ``None`` after success.
    """
    import subprocess
    import sys

    calib_file = dst.with_suffix(".calib.npy")
    np.save(calib_file, calib)
    code = "import sys; from build_engine.quantize import _modelopt_worker; _modelopt_worker(*sys.argv[1:])"
    try:
        with ticking(f"INT8 calibration on {len(calib)} images (ModelOpt)", progress):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(src),
                    str(dst),
                    str(calib_file),
                    calibration_method,
                    high_precision,
                    input_name,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
    finally:
        calib_file.unlink(missing_ok=True)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {done.returncode}"
    if done.returncode == _EXIT_NO_MODELOPT:
        return f"nvidia-modelopt does not import ({last})"
    if done.returncode != 0 or not dst.is_file():
        raise CalibrationError(f"ModelOpt INT8 quantization failed: {last}")
    return None


def _modelopt_worker(
    src: str,
    dst: str,
    calib_file: str,
    calibration_method: str,
    high_precision: str,
    input_name: str,
) -> None:
    """Child-process body of :func:`_quantize_modelopt`: its last stderr line is the error."""
    import sys

    try:
        _modelopt_without_stub_tensorrt()
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        raise SystemExit(_EXIT_NO_MODELOPT) from None

    try:
        quantize(
            src,
            quantize_mode="int8",
            calibration_data={input_name: np.load(calib_file)},
            calibration_method=calibration_method,
            calibration_eps=["cpu"],
            op_types_to_exclude=list(EXCLUDED_OPS),
            high_precision_dtype=high_precision,
            op_types_to_exclude_fp16=list(KEEP_FLOAT32_OPS),
            use_zero_point=False,
            output_path=dst,
            # ModelOpt logs to stdout (build-engine's result channel), and at ERROR level for
            # the harmless absence of NVML on a CPU host: only its failures matter, and those
            # raise.
            log_level="CRITICAL",
        )
    except (RuntimeError, ValueError, KeyError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{type(exc).__name__}: {first}", file=sys.stderr)
        raise SystemExit(3) from None


class _BatchReader:
    """ONNX Runtime's CalibrationDataReader protocol over an N x 3 x S x S array."""

    def __init__(self, data: np.ndarray, input_name: str, progress: bool = False) -> None:
        self.data, self.input_name, self.pos = data, input_name, 0
        self.bar = bar("INT8 calibration", len(data), progress, unit="img")

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.data):
            self.bar.close()
            return None
        batch = self.data[self.pos : self.pos + CALIBRATION_BATCH]
        self.pos += CALIBRATION_BATCH
        self.bar.update(len(batch))
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.pos = 0
        self.bar.reset()


def _quantize_onnxruntime(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    input_name: str,
    progress: bool = False,
    ort_calibration: OrtCalibration = "minmax",
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_BatchReader, CalibrationDataReader):
        pass

    model = load_onnx(src)
    exclude = [n.name for n in model.graph.node if n.op_type in EXCLUDED_OPS]
    try:
        quantize_static(
            str(src),
            str(dst),
            Reader(calib, input_name, progress),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ORT_QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[ort_calibration],
            nodes_to_exclude=exclude,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
            },
            calibration_providers=["CPUExecutionProvider"],
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CalibrationError(
            f"ONNX Runtime INT8 quantization failed: {exc}".splitlines()[0]
        ) from exc


def quantize_int8(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    *,
    method: Method = "auto",
    calibration_method: Literal["entropy", "max"] = "entropy",
    high_precision: Literal["fp32", "fp16"] = "fp32",
    progress: bool = False,
    ort_calibration: OrtCalibration = "minmax",
) -> QuantizeReport:
    """Quantize ``src`` (FP32 ONNX) to ``dst`` (INT8 Q/DQ) with calibration inputs ``calib``.

    ``high_precision`` is the type of what stays out of INT8: ``fp16`` for TensorRT (a strongly
    typed network runs FP32 ops in FP32, slower than FP16 on a Jetson), ``fp32`` for ONNX
    Runtime on a CPU. LayerNorm, Softmax and the reductions stay FP32 either way, and the I/O
    stays float32. Only ModelOpt can do ``fp16``; with ONNX Runtime's quantizer the rest stays
    FP32 and the report's note says so. ``calibration_method`` is ModelOpt's,
    ``ort_calibration`` ONNX Runtime's (its default MinMax equals ModelOpt's ``max``).
    """
    import onnx

    if calib.ndim != 4 or len(calib) == 0:
        raise CalibrationError("calibration set is empty; pass --calib-data with labelled images")
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    note = ""
    chosen: MethodName = "qdq-onnxruntime" if method == "onnxruntime" else "qdq-modelopt"
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        prepared, raw = Path(scratch) / "prepared.onnx", Path(scratch) / "qdq.onnx"
        source = load_onnx(src)
        input_name = describe_onnx(source, str(src)).input_name
        unshare_constants(source)
        onnx.save(source, str(prepared))
        if chosen == "qdq-modelopt":
            problem = _quantize_modelopt(
                prepared, raw, calib, calibration_method, high_precision, input_name, progress
            )
            if problem is not None:
                if method == "modelopt":
                    raise CalibrationError(
                        f"{problem}; pip install nvidia-modelopt or use --quantizer onnxruntime"
                    )
                chosen, note = "qdq-onnxruntime", f"ModelOpt not used: {problem}"
        if chosen == "qdq-onnxruntime":
            _quantize_onnxruntime(prepared, raw, calib, input_name, progress, ort_calibration)
            if high_precision == "fp16":
                note = "; ".join(
                    filter(None, [note, "ops outside INT8 stay FP32 (ONNX Runtime's quantizer)"])
                )
        model = onnx.load(str(raw))
    detached = detach_excluded_from_dq(model)
    pairs = check_qdq(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return QuantizeReport(
        method=chosen,
        excluded_ops=EXCLUDED_OPS,
        calibration_images=len(calib),
        qdq_pairs=pairs,
        detached_inputs=detached,
        note=note,
    )


__all__ = [  # the graph rules live in qdq_graph; importers of this module's names keep working
    "EXCLUDED_OPS",
    "QuantizeReport",
    "check_qdq",
    "detach_excluded_from_dq",
    "quantize_int8",
]
