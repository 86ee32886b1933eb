"""One build: source ONNX -> precision -> gate -> backend artefacts -> bundle.

:func:`build` does the work and reports progress through a ``log`` callback (the CLI prints it) and
tqdm bars on stderr; it raises :mod:`build_engine.errors` exceptions on every bad input before
any slow step (:func:`validate`: paths, the checkpoint's recorded sha256, the spec, the size of
the gate set), and writes the bundle only at the very end (atomically, see
:mod:`build_engine.bundle`).

The preprocessing spec in the manifest is the one the model was trained with: read from the
checkpoint's config, or from the ONNX file's metadata (written at export); an ONNX file without
it is refused unless the caller gives the spec explicitly. The decoding spec (stretch of deep
data, FITS HDU/bands) travels the same way and is what calibration and the gate decode their
images with; an ONNX file without it was exported before it travelled and gets the defaults
(or ``--decode-spec``). Input and output names come from the graph of the model the bundle ships.

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
from build_engine.calibration_metadata import read_calibration_metadata
from build_engine.device import DeviceInfo
from build_engine.errors import ExportError, PrecisionError, UsageError
from build_engine.export import (
    EXPORT_STEPS,
    ExportReport,
    OnnxInfo,
    describe_onnx,
    export_checkpoint,
    load_onnx,
    read_metadata,
)
from build_engine.images import (
    LabelledBatch,
    load_calibration_and_gate,
    load_gate_only,
    split_indices,
)
from build_engine.progress import bar
from edge_agent.contract.decode_config import DEFAULT_DECODE, DecodeSpec
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.labelled_data import open_labelled
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
from edge_agent.contract.preprocess import PreprocessSpec

Backend = Literal["onnxruntime", "tensorrt", "openvino"]
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
    backend: Literal["auto", "onnxruntime", "tensorrt", "openvino"] = "auto"
    calib_data: Path | None = None
    calib_size: int = 256
    gate_data: Path | None = None
    gate_size: int = 500
    gate_threshold: float = gate_mod.DEFAULT_THRESHOLD_POINTS
    gate_min_images: int = gate_mod.DEFAULT_MIN_IMAGES
    preprocess: PreprocessSpec | None = None  # for an --onnx file without the spec in it
    decode: DecodeSpec | None = None  # for an --onnx file without the decoding spec in it
    fallback: Literal["fp16"] | None = None
    batch: BatchProfile = field(default_factory=lambda: BatchProfile.model_validate({}))
    workspace_mb: int = 1024
    dla_core: int | None = None
    timing_cache: Path | None = None
    kernels: bool | None = None
    quantizer: Literal["auto", "modelopt", "onnxruntime"] = "auto"
    calibration_method: Literal["entropy", "max"] = "entropy"
    # what compiles a TensorRT plan: TensorRT's ONNX parser, or torch-tensorrt from the checkpoint
    plan_builder: Literal["tensorrt", "torch-tensorrt"] = "tensorrt"
    # INT8 mixed precision (build_engine/sensitivity.py): keep the N most sensitive layers float
    keep_sensitive: int = 0
    sensitivity_size: int = 64
    sensitivity_mode: Literal["only", "without"] = "only"
    # the FP32 model an INT8-already --onnx (galaxy-train qat) is gated against (prequantized.py)
    reference: Path | None = None
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
    if request.backend == "openvino":
        from build_engine.openvino_build import openvino_host

        openvino_host()  # raises with what to install when it is absent
        return "openvino", None
    if device.tensorrt_version is not None:
        return "tensorrt", None
    if device.intel_cpu and device.openvino_version is not None:
        return "openvino", (
            f"no TensorRT on this host: building an OpenVINO {device.openvino_version} bundle "
            "for this Intel CPU; --backend onnxruntime for one that runs on any CPU"
        )
    return "onnxruntime", TRT_NOTICE


def default_precision(backend: Backend) -> Precision | None:
    """TensorRT: FP16; ONNX Runtime: FP32; OpenVINO: ``None``, the fastest that passes the gate."""
    if backend == "openvino":
        return None
    return "fp16" if backend == "tensorrt" else "fp32"


def _cc(device: DeviceInfo) -> tuple[int, int] | None:
    if not device.compute_capability:
        return None
    major, _, minor = device.compute_capability.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def validate(
    request: BuildRequest, backend: Backend, precision: Precision | None, device: DeviceInfo
) -> None:
    """Every check that needs no model run: raise before anything slow starts.

    ``precision`` ``None`` (OpenVINO only) lets build-engine choose after gating and timing.
    """
    if (request.checkpoint is None) == (request.onnx is None):
        raise UsageError("give exactly one of --checkpoint RUN|FILE and --onnx FILE")
    b = request.batch
    if not b.min <= b.opt <= b.max:
        raise UsageError(
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
    from build_engine.prequantized import check_request

    prequantized = check_request(request.onnx, request.reference, precision)
    if prequantized and request.calib_data is None and request.gate_data is None:
        raise UsageError(
            "an INT8 Q/DQ --onnx needs held-out labelled images for the accuracy gate: "
            "--gate-data PATH (or --calib-data PATH to split them from)"
        )
    if precision == "int8" and request.calib_data is None and not prequantized:
        raise UsageError(
            "--precision int8 needs --calib-data PATH (labelled images: a labels CSV, a class-"
            "folder tree or the Galaxy10 .h5) for calibration and the accuracy gate"
        )
    if backend == "openvino" and precision == "fp16":
        raise UsageError(
            "--precision fp16 is not built for OpenVINO on a CPU; use fp32, bf16, int8 or leave "
            "--precision out to get the fastest that passes the gate"
        )
    if backend != "openvino" and precision == "bf16":
        raise UsageError("--precision bf16 is for --backend openvino (Intel CPUs)")
    if precision == "bf16" and request.gate_data is None and request.calib_data is None:
        raise UsageError(
            "--precision bf16 needs held-out labelled images for the accuracy gate: "
            "--gate-data PATH (or --calib-data PATH)"
        )
    if request.fallback is not None and precision != "int8":
        raise UsageError("--fallback fp16 only applies to --precision int8")
    if request.keep_sensitive < 0 or (request.keep_sensitive and precision != "int8"):
        raise UsageError("--keep-sensitive N takes N >= 0 and applies to --precision int8 only")
    if request.workspace_mb < 1:
        raise UsageError("--workspace-mb must be at least 1")
    if request.gate_min_images < 1:
        raise UsageError("--gate-min-images must be at least 1")
    if request.preprocess is not None and request.checkpoint is not None:
        raise UsageError(
            "--preprocess-spec is for an --onnx file without one; a checkpoint carries the spec "
            "it was trained with: drop the option"
        )
    if request.decode is not None and request.checkpoint is not None:
        raise UsageError(
            "--decode-spec is for an --onnx file without one; a checkpoint carries the decoding "
            "spec it was trained with: drop the option"
        )
    for option, path in (
        ("--onnx", request.onnx),
        ("--calib-data", request.calib_data),
        ("--gate-data", request.gate_data),
    ):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{option} {path}: not found")
    if request.checkpoint is not None:
        verify_checkpoint(request.checkpoint)
    gated = precision in ("int8", "bf16") or (
        precision in ("fp16", None) and request.gate_data is not None
    )
    if gated:
        gate_mod.check_size(planned_gate_images(request), request.gate_min_images)
    check_output_dir(request.out)


def verify_checkpoint(checkpoint: Path) -> str:
    """The checkpoint's weights sha256, verified against the run's record (no torch needed)."""
    from training.errors import CheckpointError
    from training.errors import UsageError as TrainingUsageError
    from training.weights import verify_weights

    path = Path(checkpoint)
    weights = path / "best.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise UsageError(
            f"--checkpoint {checkpoint}: no checkpoint here (expected a training run directory "
            "with best.safetensors, or a .safetensors file)"
        )
    try:
        return verify_weights(weights)
    except TrainingUsageError as exc:
        raise UsageError(str(exc)) from exc
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc


def planned_gate_images(request: BuildRequest) -> int:
    """How many held-out images the gate will get, counted without reading any pixels."""

    def count(path: Path, limit: int) -> int:
        try:
            return len(open_labelled(path, limit=limit, check_conflicts=False))
        except GalaxyEdgeError as exc:
            raise UsageError(f"{path}: {exc}") from exc

    if request.gate_data is not None:
        return count(request.gate_data, request.gate_size)
    assert request.calib_data is not None
    n = count(request.calib_data, request.calib_size + request.gate_size)
    if n < 2:
        return n
    return len(split_indices(n, request.calib_size, request.gate_size)[1])


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
    info: OnnxInfo
    spec: PreprocessSpec
    spec_origin: str
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    decode_origin: str = "the defaults"


NO_SPEC = (
    "{path}: no preprocessing spec in its metadata ({key}), so the pixels the model expects are "
    "unknown; export it with build-engine --checkpoint RUN (which records the spec it was "
    "trained with), or give it explicitly: --preprocess-spec SPEC.json, e.g. "
    '{{"input_size": {size}, "crop": "center_square", "scale": 0.00784313725490196, '
    '"offset": -1.0}}'
)


def _checkpoint_source(request: BuildRequest, scratch: Path, log: Callable[[str], None]) -> _Source:
    assert request.checkpoint is not None
    log(f"exporting {request.checkpoint} to ONNX (opset 17, static size, dynamic batch)")
    with bar("export", EXPORT_STEPS, request.progress) as shown:

        def step(name: str) -> None:
            shown.set_postfix_str(name, refresh=False)
            shown.update()

        report: ExportReport = export_checkpoint(
            request.checkpoint, scratch / "source.onnx", step=step
        )
    simplified = "simplified" if report.simplified else f"not simplified ({report.simplify_note})"
    log(f"export checked: max |onnx - torch| = {report.max_abs_diff:.2e} on 3 images, {simplified}")
    assert report.spec is not None and report.decode is not None
    return _Source(
        report.onnx_path,
        report.model_name,
        report.parameters,
        report.provenance,
        report.info,
        report.spec,
        "the checkpoint's training config",
        report.decode,
        "the checkpoint's training config",
    )


def _onnx_source(request: BuildRequest) -> _Source:
    from build_engine.export import META_DECODE, META_PREPROCESS

    assert request.onnx is not None
    where = str(request.onnx)
    model = load_onnx(request.onnx)
    info = describe_onnx(model, where)
    meta = read_metadata(model, where)
    explicit = request.preprocess
    if meta.spec is not None and explicit is not None and meta.spec != explicit:
        raise UsageError(
            f"{where} records the spec it was trained with ({meta.spec.model_dump_json()}), "
            f"--preprocess-spec differs ({explicit.model_dump_json()}); drop the option"
        )
    spec = meta.spec or explicit
    if spec is None:
        raise UsageError(NO_SPEC.format(path=where, key=META_PREPROCESS, size=info.input_size))
    if spec.input_size != info.input_size:
        raise UsageError(
            f"{where}: the preprocessing spec's input_size {spec.input_size} does not match the "
            f"graph's input {info.input_name!r} of {info.input_size}x{info.input_size}; fix the spec"
        )
    origin = "the ONNX file's metadata" if meta.spec is not None else "--preprocess-spec"
    if meta.decode is not None and request.decode is not None and meta.decode != request.decode:
        raise UsageError(
            f"{where} records the decoding spec it was trained with "
            f"({meta.decode.model_dump_json()}), --decode-spec differs "
            f"({request.decode.model_dump_json()}); drop the option"
        )
    decode = DEFAULT_DECODE
    decode_origin = f"the defaults (no {META_DECODE} in {where}: exported before it travelled)"
    if meta.decode is not None:
        decode, decode_origin = meta.decode, "the ONNX file's metadata"
    elif request.decode is not None:
        decode, decode_origin = request.decode, "--decode-spec"
    return _Source(
        Path(request.onnx),
        meta.model_name,
        meta.parameters,
        meta.provenance,
        info,
        spec,
        origin,
        decode,
        decode_origin,
    )


def _source(request: BuildRequest, scratch: Path, log: Callable[[str], None]) -> _Source:
    if request.checkpoint is not None:
        return _checkpoint_source(request, scratch, log)
    return _onnx_source(request)


def _gate(
    request: BuildRequest,
    reference: Path,
    candidate: Path,
    data: LabelledBatch,
    precision: str,
    log: Callable[[str], None],
) -> AccuracyGate:
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

    if request.reference is not None:  # INT8 already (galaxy-train qat): taken as it is
        from build_engine.prequantized import prequantized_candidate

        made, reference, quantized, held_out = prequantized_candidate(
            request, source.path, spec, scratch, log, decode=source.decode
        )
        gated = _gate(request, reference, made, held_out, "int8", log)
        return _Candidate(made, "int8", quantized, gated), held_out
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
    accuracy = _gate(request, source.path, path, gate_data, "int8", log)
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
        accuracy = _gate(request, source.path, path, gate_data, "fp16", log)
        gate_mod.enforce(accuracy, "fp16")
    return _Candidate(path, "fp16", quantization, accuracy)


def build(request: BuildRequest, device: DeviceInfo, log: Callable[[str], None]) -> Manifest:
    """Build the bundle ``request`` asks for on this ``device``; returns the written manifest."""
    if request.plan_builder == "torch-tensorrt":  # build_engine/torch_tensorrt_build.py
        from build_engine.torch_tensorrt_build import build_with_torch_tensorrt

        return build_with_torch_tensorrt(request, device, log)
    backend, notice = resolve_backend(request, device)
    if backend == "openvino":
        validate(request, backend, request.precision, device)
        return _build_openvino(request, device, log, notice)
    precision: Precision | None = request.precision or default_precision(backend)
    assert precision is not None
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
        calibration = read_calibration_metadata(load_onnx(source.path), str(source.path))
        log(
            f"calibration: softmax(logits / {calibration.temperature:.4f}), ECE "
            f"{calibration.ece_before:.4f} -> {calibration.ece_after:.4f} on the {calibration.fitted_on}"
            if calibration is not None
            else "calibration: none in the model (raw softmax; galaxy-train calibrate fits one)"
        )
        spec = source.spec
        log(f"preprocessing spec from {source.spec_origin}: {_spec_line(spec)}")
        log(f"decoding spec from {source.decode_origin}: {_decode_line(source.decode)}")
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
            gate_data = load_gate_only(
                request.gate_data, request.gate_size, spec, source.decode.decoder()
            )
        if precision == "fp16":
            candidate = _fp16(request, source, gate_data, scratch, log)
        shipped = describe_onnx(load_onnx(candidate.path), str(candidate.path))
        if (shipped.input_name, shipped.output_name) != (
            source.info.input_name,
            source.info.output_name,
        ):
            raise ExportError(
                f"{candidate.precision} conversion renamed the model's tensors "
                f"({source.info.input_name}->{source.info.output_name} became "
                f"{shipped.input_name}->{shipped.output_name}); report this as a bug"
            )
        files, trt_info, kernel_info = _backend_files(
            request, backend, device, candidate.path, shipped.input_name, scratch, log
        )
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            builder=_builder(),
            model=ModelInfo(
                name=source.model_name, classes=official_classes(), parameters=source.parameters
            ),
            preprocess=spec,
            decode=source.decode,
            backend=backend,
            precision=candidate.precision,
            model_file="model.plan" if backend == "tensorrt" else "model.onnx",
            input_name=shipped.input_name,
            output_name=shipped.output_name,
            batch=request.batch,
            source_onnx_sha256=sha256_file(source.path),
            quantization=candidate.quantization,
            accuracy_gate=candidate.accuracy,
            tensorrt=trt_info,
            kernels=kernel_info,
            training=source.provenance,
            calibration=calibration,
        )
        written = write_bundle(request.out, files, manifest)
    log(f"wrote {backend} {candidate.precision} bundle to {request.out}")
    return written


def _build_openvino(
    request: BuildRequest, device: DeviceInfo, log: Callable[[str], None], notice: str | None
) -> Manifest:
    """An OpenVINO bundle: FP32, BF16 or INT8, each gated through OpenVINO, fastest wins."""
    from build_engine import openvino_choice as choice
    from build_engine.openvino_build import openvino_host, write_compiled

    host = openvino_host()
    if notice:
        log(notice)
    wanted = request.precision
    with tempfile.TemporaryDirectory(prefix="build-engine-") as tmp:
        scratch = Path(tmp)
        source = _source(request, scratch, log)
        calibration = read_calibration_metadata(load_onnx(source.path), str(source.path))
        spec = source.spec
        log(f"preprocessing spec from {source.spec_origin}: {_spec_line(spec)}")
        log(f"decoding spec from {source.decode_origin}: {_decode_line(source.decode)}")
        int8: _Candidate | None = None
        gate_data: LabelledBatch | None = None
        if request.calib_data is not None and wanted in (None, "int8"):
            int8, gate_data = _int8(request, "openvino", source, spec, scratch, log)
        elif request.calib_data is not None and wanted == "bf16":
            gate_data = load_gate_only(
                request.calib_data, request.gate_size, spec, source.decode.decoder()
            )
        if request.gate_data is not None and gate_data is None:
            gate_data = load_gate_only(
                request.gate_data, request.gate_size, spec, source.decode.decoder()
            )
        found = choice.candidates(
            wanted, source.path, int8.path if int8 else None, gate_data, host, log
        )
        choice.gate_and_time(
            found,
            source.path,
            gate_data,
            choice.GateSettings(request.gate_threshold, request.gate_min_images, request.progress),
            input_size=spec.input_size,
            opt=request.batch.opt,
            log=log,
        )
        best = choice.choose(found, log)
        quantization = (
            int8.quantization
            if best.precision == "int8" and int8 is not None
            else Quantization.model_validate({})
        )
        compiled, info = write_compiled(best.onnx, scratch, best.hint, host)
        shipped = describe_onnx(load_onnx(best.onnx), str(best.onnx))
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            builder=_builder(),
            model=ModelInfo(
                name=source.model_name, classes=official_classes(), parameters=source.parameters
            ),
            preprocess=spec,
            decode=source.decode,
            backend="openvino",
            precision=best.precision,
            model_file=info.compiled_file,
            input_name=shipped.input_name,
            output_name=shipped.output_name,
            batch=request.batch,
            source_onnx_sha256=sha256_file(source.path),
            quantization=quantization,
            accuracy_gate=best.accuracy,
            openvino=info,
            training=source.provenance,
            calibration=calibration,
        )
        files = {"model.onnx": best.onnx, info.compiled_file: compiled}
        written = write_bundle(request.out, files, manifest)
    log(f"wrote openvino {best.precision} bundle to {request.out}")
    return written


def _random_batch(spec: PreprocessSpec) -> np.ndarray:
    """Inputs in the model's range for the FP16 check when no labelled images were given."""
    s = spec.input_size
    pixels = np.random.default_rng(0).uniform(0.0, 255.0, (4, 3, s, s)).astype(np.float32)
    return pixels * np.float32(spec.scale) + np.float32(spec.offset)


def _decode_line(decode: DecodeSpec) -> str:
    s, f = decode.stretch, decode.fits
    return (
        f"stretch {s.method} {s.low_percentile:g}-{s.high_percentile:g}%"
        + (f" (a {s.asinh_a:g})" if s.method == "asinh" else "")
        + f", FITS HDU {'first image' if f.hdu is None else f.hdu}"
        + (f", bands {f.bands}" if f.bands is not None else "")
    )


def _spec_line(spec: PreprocessSpec) -> str:
    return (
        f"{spec.input_size}x{spec.input_size}, crop {spec.crop}, {spec.interpolation}, "
        f"{spec.channel_order}, x * {spec.scale:.6g} + {spec.offset:g}"
    )


def _backend_files(
    request: BuildRequest,
    backend: Backend,
    device: DeviceInfo,
    candidate: Path,
    input_name: str,
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
            input_name=input_name,
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
