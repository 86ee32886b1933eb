"""One build: source ONNX -> precision -> gate -> backend artefacts -> bundle.

:func:`build` does the work and reports progress through a ``log`` callback (the CLI prints it);
it raises :mod:`build_engine.errors` exceptions on every bad input before any slow step, and
writes the bundle only at the very end (atomically, see :mod:`build_engine.bundle`).

Defaults come from measurements: a TensorRT bundle is FP16 (Jetson tensor cores, no accuracy
risk worth a gate); an ONNX Runtime (CPU) bundle is FP32, because INT8 Q/DQ ran slower than
FP32 on the team's x86 CPU for MobileViT and FP16 has no fast CPU kernels (bench/ has numbers).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from build_engine import gate as gate_mod
from build_engine.bundle import check_output_dir, write_bundle
from build_engine.device import DeviceInfo
from build_engine.errors import CalibrationError, PrecisionError
from build_engine.export import (
    ExportReport,
    describe_onnx,
    export_checkpoint,
    load_onnx,
    read_metadata,
)
from build_engine.images import LabelledBatch, load_calibration_and_gate, load_gate_only
from edge_agent.contract.manifest import (
    AccuracyGate,
    BatchProfile,
    KernelInfo,
    Manifest,
    ModelInfo,
    Precision,
    Quantization,
    TensorRTInfo,
    TrainingProvenance,
    official_classes,
    sha256_file,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec

Backend = Literal["onnxruntime", "tensorrt"]
TRT_NOTICE = (
    "no TensorRT on this host: building an ONNX Runtime bundle; a TensorRT plan needs the device "
    "(run build-engine on the Jetson)"
)
# Lowest compute capability with fast FP16 / INT8 (TensorRT's own support matrix).
MIN_CC = {"fp16": (5, 3), "int8": (6, 1)}


@dataclass
class BuildRequest:
    """Everything ``build-engine`` was asked to do (CLI options, already parsed)."""

    out: Path
    checkpoint: Path | None = None
    onnx: Path | None = None
    precision: Precision | None = None
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    calib_data: Path | None = None
    calib_size: int = 256
    gate_data: Path | None = None
    gate_size: int = 200
    gate_threshold: float = gate_mod.DEFAULT_THRESHOLD_POINTS
    fallback: Literal["fp16"] | None = None
    batch: BatchProfile = field(default_factory=lambda: BatchProfile.model_validate({}))
    workspace_mb: int = 1024
    dla_core: int | None = None
    timing_cache: Path | None = None
    kernels: bool | None = None
    quantizer: Literal["auto", "modelopt", "onnxruntime"] = "auto"
    calibration_method: Literal["entropy", "max"] = "entropy"
    progress: bool = True


def resolve_backend(request: BuildRequest, device: DeviceInfo) -> tuple[Backend, str | None]:
    """The backend to build for, and the one-line notice when ``auto`` had to pick ONNX Runtime."""
    if request.backend == "tensorrt":
        if device.tensorrt_version is None:
            raise PrecisionError(
                "--backend tensorrt: TensorRT does not import here; a TensorRT plan needs the "
                "device (run build-engine on the Jetson) or use --backend onnxruntime"
            )
        return "tensorrt", None
    if request.backend == "onnxruntime":
        return "onnxruntime", None
    if device.tensorrt_version is not None:
        return "tensorrt", None
    return "onnxruntime", TRT_NOTICE


def default_precision(backend: Backend) -> Precision:
    return "fp16" if backend == "tensorrt" else "fp32"


def _cc(device: DeviceInfo) -> tuple[int, int] | None:
    if not device.compute_capability:
        return None
    major, _, minor = device.compute_capability.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def validate(
    request: BuildRequest, backend: Backend, precision: Precision, device: DeviceInfo
) -> None:
    """Every check that needs no model: raise before anything slow runs."""
    if (request.checkpoint is None) == (request.onnx is None):
        raise PrecisionError("give exactly one of --checkpoint RUN|FILE and --onnx FILE")
    b = request.batch
    if not b.min <= b.opt <= b.max:
        raise PrecisionError(
            f"batch profile must satisfy min <= opt <= max, got {b.min}/{b.opt}/{b.max}"
        )
    if request.dla_core is not None:
        if backend != "tensorrt":
            raise PrecisionError(
                "--dla-core needs the TensorRT backend; drop it for an ONNX Runtime bundle"
            )
        if request.dla_core < 0 or request.dla_core >= device.dla_cores:
            raise PrecisionError(
                f"--dla-core {request.dla_core}: this device has {device.dla_cores} DLA core(s) "
                "(Orin Nano has none); drop --dla-core or pick 0..cores-1"
            )
    cc = _cc(device)
    if backend == "tensorrt" and precision in MIN_CC and cc is not None and cc < MIN_CC[precision]:
        raise PrecisionError(
            f"--precision {precision}: GPU {device.gpu_name} (compute capability "
            f"{device.compute_capability}) has no fast {precision.upper()}; use --precision fp32"
        )
    if precision == "int8" and request.calib_data is None:
        raise CalibrationError(
            "--precision int8 needs --calib-data PATH (labelled images: a labels CSV, a class-"
            "folder tree or the Galaxy10 .h5) for calibration and the accuracy gate"
        )
    if request.fallback is not None and precision != "int8":
        raise PrecisionError("--fallback fp16 only applies to --precision int8")
    if request.workspace_mb < 1:
        raise PrecisionError("--workspace-mb must be at least 1")
    check_output_dir(request.out)


def _builder() -> str:
    try:
        return f"galaxy-edge {importlib.metadata.version('galaxy-edge')}"
    except importlib.metadata.PackageNotFoundError:
        return "galaxy-edge (not installed)"


@dataclass
class _Source:
    path: Path
    model_name: str
    parameters: int | None
    provenance: TrainingProvenance
    input_size: int


def _source(request: BuildRequest, scratch: Path, log: Callable[[str], None]) -> _Source:
    if request.checkpoint is not None:
        log(f"exporting {request.checkpoint} to ONNX (opset 17, static size, dynamic batch)")
        report: ExportReport = export_checkpoint(request.checkpoint, scratch / "source.onnx")
        simplified = (
            "simplified" if report.simplified else f"not simplified ({report.simplify_note})"
        )
        log(
            f"export checked: max |onnx - torch| = {report.max_abs_diff:.2e} on 3 images, {simplified}"
        )
        return _Source(
            report.onnx_path,
            report.model_name,
            report.parameters,
            report.provenance,
            report.info.input_size,
        )
    assert request.onnx is not None
    model = load_onnx(request.onnx)
    info = describe_onnx(model, str(request.onnx))
    name, provenance, parameters = read_metadata(model)
    return _Source(Path(request.onnx), name, parameters, provenance, info.input_size)


def _gate(
    reference: Path,
    candidate: Path,
    data: LabelledBatch,
    precision: str,
    threshold: float,
    log: Callable[[str], None],
) -> AccuracyGate:
    result = gate_mod.evaluate(reference, candidate, data, threshold_points=threshold)
    log(gate_mod.describe(result, precision))
    return result


@dataclass
class _Candidate:
    """The ONNX the backend will run, with how it was made and how it scored."""

    path: Path
    precision: Precision
    quantization: Quantization
    accuracy: AccuracyGate | None = None


def _int8(
    request: BuildRequest,
    backend: Backend,
    source: _Source,
    spec: PreprocessSpec,
    scratch: Path,
    log: Callable[[str], None],
) -> tuple[_Candidate, LabelledBatch]:
    """Calibrate, quantize and gate; the gate's verdict is in the candidate's ``accuracy``."""
    from build_engine.quantize import quantize_int8

    assert request.calib_data is not None
    calib, gate_data = load_calibration_and_gate(
        request.calib_data,
        request.calib_size,
        request.gate_size,
        gate_path=request.gate_data,
        spec=spec,
    )
    log(f"calibrating INT8 on {len(calib)} images; gate on {len(gate_data)} held-out images")
    path = scratch / "model_int8.onnx"
    q = quantize_int8(
        source.path,
        path,
        calib.images,
        method=request.quantizer,
        calibration_method=request.calibration_method,
        high_precision="fp16" if backend == "tensorrt" else "fp32",
    )
    log(
        f"INT8 Q/DQ by {q.method}: {q.qdq_pairs} quantizers, {', '.join(q.excluded_ops)} kept out of INT8"
    )
    if q.note:
        log(q.note)
    quantization = Quantization.model_validate(
        {
            "method": q.method,
            "calibration_source": calib.source,
            "calibration_images": q.calibration_images,
            "excluded_ops": list(q.excluded_ops),
        }
    )
    accuracy = _gate(source.path, path, gate_data, "int8", request.gate_threshold, log)
    return _Candidate(path, "int8", quantization, accuracy), gate_data


def _fp16(
    request: BuildRequest,
    source: _Source,
    gate_data: LabelledBatch | None,
    scratch: Path,
    log: Callable[[str], None],
) -> _Candidate:
    """Convert to FP16 (checked against FP32), and gate it when labelled images are at hand."""
    from build_engine.fp16 import convert_fp16

    path = scratch / "model_fp16.onnx"
    check = gate_data.images[:8] if gate_data is not None else _random_batch(source.input_size)
    f = convert_fp16(source.path, path, check)
    log(
        f"FP16 ONNX: max |fp16 - fp32| = {f.max_abs_diff:.2e}, LayerNorm/Softmax/reductions kept FP32"
    )
    quantization = Quantization.model_validate(
        {"method": "fp16-convert", "excluded_ops": list(f.kept_float32)}
    )
    accuracy = None
    if gate_data is not None:
        accuracy = _gate(source.path, path, gate_data, "fp16", request.gate_threshold, log)
        gate_mod.enforce(accuracy, "fp16")
    return _Candidate(path, "fp16", quantization, accuracy)


def build(request: BuildRequest, device: DeviceInfo, log: Callable[[str], None]) -> Manifest:
    """Build the bundle ``request`` asks for on this ``device``; returns the written manifest."""
    backend, notice = resolve_backend(request, device)
    precision: Precision = request.precision or default_precision(backend)
    validate(request, backend, precision, device)
    if notice:
        log(notice)
    if backend == "onnxruntime" and precision != "fp32":
        log(
            f"note: {precision.upper()} runs about half as fast as FP32 in ONNX Runtime on a CPU "
            "(bench/bench_cpu_inference.py); FP32 is the CPU default"
        )
    with tempfile.TemporaryDirectory(prefix="build-engine-") as tmp:
        scratch = Path(tmp)
        source = _source(request, scratch, log)
        spec = DEFAULT_SPEC.model_copy(update={"input_size": source.input_size})
        candidate = _Candidate(source.path, "fp32", Quantization.model_validate({}))
        gate_data: LabelledBatch | None = None
        if precision == "int8":
            candidate, gate_data = _int8(request, backend, source, spec, scratch, log)
            assert candidate.accuracy is not None
            if not candidate.accuracy.passed:
                if request.fallback != "fp16":
                    gate_mod.enforce(candidate.accuracy, "int8")
                log(
                    "INT8 REFUSED by the accuracy gate: building FP16 instead, as --fallback fp16 asked"
                )
                precision = "fp16"
        elif request.gate_data is not None and precision == "fp16":
            gate_data = load_gate_only(request.gate_data, request.gate_size, spec)
        if precision == "fp16":
            candidate = _fp16(request, source, gate_data, scratch, log)
        files, trt_info, kernel_info = _backend_files(
            request, backend, device, candidate.path, scratch, log
        )
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            builder=_builder(),
            model=ModelInfo(
                name=source.model_name, classes=official_classes(), parameters=source.parameters
            ),
            preprocess=spec,
            backend=backend,
            precision=candidate.precision,
            model_file="model.plan" if backend == "tensorrt" else "model.onnx",
            batch=request.batch,
            source_onnx_sha256=sha256_file(source.path),
            quantization=candidate.quantization,
            accuracy_gate=candidate.accuracy,
            tensorrt=trt_info,
            kernels=kernel_info,
            training=source.provenance,
        )
        written = write_bundle(request.out, files, manifest)
    log(f"wrote {backend} {candidate.precision} bundle to {request.out}")
    return written


def _random_batch(size: int) -> np.ndarray:
    """Inputs in the model's range for the FP16 check when no labelled images were given."""
    return np.random.default_rng(0).uniform(-1.0, 1.0, (4, 3, size, size)).astype(np.float32)


def _backend_files(
    request: BuildRequest,
    backend: Backend,
    device: DeviceInfo,
    candidate: Path,
    scratch: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, Path], TensorRTInfo | None, KernelInfo | None]:
    files: dict[str, Path] = {}
    trt_info: TensorRTInfo | None = None
    if backend == "tensorrt":
        from build_engine.tensorrt_build import build_plan

        log("building the TensorRT plan (a first build takes minutes on a Jetson)")
        plan = scratch / "model.plan"
        trt_info = build_plan(
            candidate,
            plan,
            batch=request.batch,
            workspace_bytes=request.workspace_mb << 20,
            dla_core=request.dla_core,
            timing_cache=request.timing_cache,
            progress=request.progress,
        )
        files["model.plan"] = plan
    else:
        files["model.onnx"] = candidate
    kernel_info: KernelInfo | None = None
    want_kernels = request.kernels if request.kernels is not None else backend == "tensorrt"
    if want_kernels:
        from build_engine.kernels import compile_kernels

        kernel_dir = scratch / "kernels"
        kernel_dir.mkdir()
        kernel_info = compile_kernels(kernel_dir, arch=device.arch)
        for name in (kernel_info.cubin, kernel_info.ptx):
            if name:
                files[name] = kernel_dir / name
        log(
            f"compiled preprocessing kernels for {kernel_info.arch} with CUDA {kernel_info.cuda_version}"
        )
    return files, trt_info, kernel_info
