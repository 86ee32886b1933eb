"""What ``build-engine`` was asked to build, and every check of it that needs no model run.

:func:`validate` raises a :mod:`build_engine.errors` exception on every bad input before any
slow step starts: options that contradict each other or the device, paths, the checkpoint's
recorded sha256, the spec options, the size of the gate set, the output directory. Which
backend and precision a request means when it leaves them to ``auto`` is decided here too
(:func:`resolve_backend`, :func:`default_precision`), from measurements: a TensorRT bundle is
FP16 (Jetson tensor cores, no accuracy risk worth a gate); an ONNX Runtime (CPU) bundle is FP32,
because INT8 Q/DQ ran slower than FP32 on the team's x86 CPU for MobileViT and FP16 has no fast
CPU kernels (bench/ has numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from build_engine import gate as gate_mod
from build_engine.bundle import check_output_dir
from build_engine.device import DeviceInfo
from build_engine.errors import ExportError, PrecisionError, UsageError
from build_engine.images import split_indices
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.labelled_data import open_labelled
from edge_agent.contract.manifest import BatchProfile, Precision
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

    prequantized = check_request(request, precision)
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
