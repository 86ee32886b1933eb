"""One build: source ONNX -> precision -> gate -> backend artefacts -> bundle.

:func:`build` does the work and reports progress through a ``log`` callback (the CLI prints it) and
tqdm bars on stderr; it raises :mod:`build_engine.errors` exceptions on every bad input before
any slow step (:func:`build_engine.request.validate`), and writes the bundle only at the very
end (atomically, see :mod:`build_engine.bundle`). The steps, in order:

1. the source: the checkpoint exported to ONNX, or the ONNX file, with the preprocessing and
   decoding specs the model was trained with (:mod:`build_engine.source`);
2. the precision: FP32 as it is, or an INT8 / FP16 candidate, gated
   (:mod:`build_engine.lower_precision`); INT8 refused by the gate is an error, or FP16 with
   ``--fallback fp16``;
3. the backend's files: the ONNX for ONNX Runtime, a plan for TensorRT
   (:mod:`build_engine.tensorrt_build`), and the CUDA preprocessing kernels where asked
   (:mod:`build_engine.kernels`);
4. the manifest and the bundle.

Two paths branch off before step 1: OpenVINO, which chooses among its candidates by gating and
timing them on this CPU (:mod:`build_engine.openvino_bundle`), and ``--plan-builder
torch-tensorrt`` (:mod:`build_engine.torch_tensorrt_build`). Input and output names come from
the graph of the model the bundle ships.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from build_engine import gate as gate_mod
from build_engine.bundle import write_bundle
from build_engine.device import DeviceInfo
from build_engine.errors import ExportError
from build_engine.export import describe_onnx, load_onnx
from build_engine.images import LabelledBatch, load_gate_only
from build_engine.lower_precision import Candidate, fp16_candidate, int8_candidate
from build_engine.request import (
    TRT_NOTICE,
    Backend,
    BuildRequest,
    default_precision,
    resolve_backend,
    validate,
)
from build_engine.source import load_source
from edge_agent.contract.manifest import (
    KernelInfo,
    Manifest,
    Precision,
    Quantization,
    TensorRTInfo,
)


def build(request: BuildRequest, device: DeviceInfo, log: Callable[[str], None]) -> Manifest:
    """Build the bundle ``request`` asks for on this ``device``; returns the written manifest."""
    if request.plan_builder == "torch-tensorrt":  # build_engine/torch_tensorrt_build.py
        from build_engine.torch_tensorrt_build import build_with_torch_tensorrt

        return build_with_torch_tensorrt(request, device, log)
    backend, notice = resolve_backend(request, device)
    if backend == "openvino":
        from build_engine.openvino_bundle import build_openvino

        validate(request, backend, request.precision, device)
        return build_openvino(request, log, notice)
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
        source = load_source(request, scratch, log)
        calibration = source.calibration
        log(
            f"calibration: softmax(logits / {calibration.temperature:.4f}), ECE "
            f"{calibration.ece_before:.4f} -> {calibration.ece_after:.4f} on the {calibration.fitted_on}"
            if calibration is not None
            else "calibration: none in the model (raw softmax; galaxy-train calibrate fits one)"
        )
        source.log_specs(log)
        candidate = Candidate(source.path, "fp32", Quantization.model_validate({}))
        gate_data: LabelledBatch | None = None
        if precision == "int8":
            candidate, gate_data = int8_candidate(request, backend, source, scratch, log)
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
                request.gate_data, request.gate_size, source.spec, source.decode.decoder()
            )
        if precision == "fp16":
            candidate = fp16_candidate(request, source, gate_data, scratch, log)
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
        manifest = source.manifest(
            backend=backend,
            precision=candidate.precision,
            model_file="model.plan" if backend == "tensorrt" else "model.onnx",
            input_name=shipped.input_name,
            output_name=shipped.output_name,
            batch=request.batch,
            quantization=candidate.quantization,
            accuracy_gate=candidate.accuracy,
            tensorrt=trt_info,
            kernels=kernel_info,
        )
        written = write_bundle(request.out, files, manifest)
    log(f"wrote {backend} {candidate.precision} bundle to {request.out}")
    return written


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
        from build_engine.kernels import compile_into

        kernel_info, kernel_files = compile_into(scratch, device.arch, log)
        files.update(kernel_files)
    return files, trt_info, kernel_info


__all__ = ["TRT_NOTICE", "BuildRequest", "build"]  # BuildRequest and TRT_NOTICE: request.py
