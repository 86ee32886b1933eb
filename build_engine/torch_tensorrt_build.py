"""The second way to make a plan on the device: torch-tensorrt (``--plan-builder torch-tensorrt``).

The checkpoint is loaded as the torch model it was trained as, exported with ``torch.export``
(an ExportedProgram, the batch a dynamic dimension over the profile's min..max) and compiled by
torch-tensorrt's dynamo path straight to a serialized TensorRT engine
(``torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine``) with the
precisions ``--precision`` asks for (fp16: FP16 and FP32 kernels, TensorRT choosing per layer;
fp32: FP32 only) and the batch profile as the input's min/opt/max shapes. The engine is the same
kind of ``model.plan`` the TensorRT builder writes (:mod:`build_engine.tensorrt_build`, from the
ONNX): the agent's TensorRT backend loads either, so a user can build both on the device and
compare them (``build-engine-compare``).

Everything else is the TensorRT-builder path's: the checkpoint's weights verified, the FP32 ONNX
exported beside it (the gate's reference, ``source_onnx_sha256`` and the staleness key), the
spec, provenance and calibration from its metadata, the preprocessing kernels, the manifest,
the atomic bundle write. The gate differs in one way, for the better: an FP16 engine is gated by
running *the engine itself* on the held-out images (``--gate-data``), because TensorRT picks
each layer's precision at build time and no ONNX file stands for it.

Unverified here: torch-tensorrt installs only from NVIDIA's package index (it pins the
``tensorrt`` wheels served there), so no machine of this team has it. It is imported only when
asked for, with a one-line error when absent, and tested against a fake module that records the
compile call. INT8 through torch-tensorrt needs a quantization-aware model (ModelOpt Q/DQ in the
torch graph), which ``galaxy-train`` does not make yet: refused with a message.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from build_engine import gate as gate_mod
from build_engine.bundle import write_file_atomic
from build_engine.errors import PrecisionError, TensorRTBuildError, UsageError
from build_engine.progress import bar
from edge_agent.contract.manifest import (
    AccuracyGate,
    BatchProfile,
    KernelInfo,
    Manifest,
    Precision,
    Quantization,
    TensorRTInfo,
)

if TYPE_CHECKING:
    from build_engine.device import DeviceInfo
    from build_engine.request import BuildRequest

PLAN_BUILDERS = ("tensorrt", "torch-tensorrt")
PLAN_NAME = "model.plan"
INSTALL_HINT = (
    "torch-tensorrt does not import here; it installs only from NVIDIA's package index, on the "
    "device, matching its torch and TensorRT (e.g. pip install torch-tensorrt "
    "--extra-index-url https://pypi.nvidia.com, or the JetPack container's build); or use the "
    "default --plan-builder tensorrt"
)
SUPPORTED: dict[str, str] = {"fp32": "FP32 kernels only", "fp16": "FP16 and FP32 kernels"}


def import_torch_tensorrt() -> ModuleType:
    """The ``torch_tensorrt`` module, or :class:`PrecisionError` saying how to get it."""
    try:
        module = importlib.import_module("torch_tensorrt")
    except ImportError as exc:
        raise PrecisionError(f"--plan-builder torch-tensorrt: {INSTALL_HINT} ({exc})") from exc
    if not hasattr(module, "dynamo"):
        raise PrecisionError(
            f"--plan-builder torch-tensorrt: torch_tensorrt "
            f"{getattr(module, '__version__', '?')} has no dynamo frontend (2.1 or later needed)"
        )
    return module


def enabled_precisions(precision: Precision) -> set[Any]:
    """The torch dtypes TensorRT may choose kernels in, for ``--precision``."""
    import torch

    if precision == "fp32":
        return {torch.float32}
    if precision == "fp16":
        return {torch.float16, torch.float32}
    raise PrecisionError(
        f"--plan-builder torch-tensorrt --precision {precision}: only fp32 and fp16 are built "
        "this way (INT8 needs a quantization-aware model with Q/DQ in its torch graph, which "
        "galaxy-train does not make yet); use the default --plan-builder tensorrt for INT8"
    )


def export_program(
    model: Any, input_size: int, batch: BatchProfile, device: str = "cuda"
) -> tuple[Any, Any]:
    """``torch.export`` of ``model`` with the batch dynamic over ``batch.min..batch.max``.

    Returns (ExportedProgram, example input). H and W stay static: MobileViT's unfold computes
    patch counts from them. The example has the profile's opt batch (at least 2, so that
    torch.export does not specialise the batch dimension to 1).
    """
    import torch

    model = model.eval().to(device)
    example = torch.zeros((max(2, batch.opt), 3, input_size, input_size), device=device)
    if batch.max < example.shape[0]:
        example = example[: batch.max]
    dims = None
    if batch.min != batch.max:
        dims = ({0: torch.export.Dim("batch", min=batch.min, max=batch.max)},)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=dims)
    except Exception as exc:  # torch.export raises many kinds (UserError, Unsupported, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTBuildError(f"torch.export of the checkpoint failed: {first}") from exc
    return program, example


def compile_engine(
    torch_trt: ModuleType,
    program: Any,
    *,
    precision: Precision,
    input_size: int,
    batch: BatchProfile,
    workspace_bytes: int,
    timing_cache: Path | None,
) -> bytes:
    """torch-tensorrt's dynamo path: ExportedProgram -> serialized TensorRT engine bytes."""
    import torch

    shape = (3, input_size, input_size)
    inputs = [
        torch_trt.Input(
            min_shape=(batch.min, *shape),
            opt_shape=(batch.opt, *shape),
            max_shape=(batch.max, *shape),
            dtype=torch.float32,
        )
    ]
    options: dict[str, Any] = {
        "inputs": inputs,
        "enabled_precisions": enabled_precisions(precision),
        "workspace_size": workspace_bytes,
    }
    if timing_cache is not None:
        options["timing_cache_path"] = str(timing_cache)
    try:
        engine = torch_trt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program, **options
        )
    except Exception as exc:  # the compiler raises whatever its converters raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTBuildError(f"torch-tensorrt could not compile the model: {first}") from exc
    data = bytes(engine)
    if not data:
        raise TensorRTBuildError("torch-tensorrt returned an empty engine")
    return data


@dataclass(frozen=True)
class EngineIO:
    """The engine's one input and one output, as TensorRT names them."""

    input_name: str
    output_name: str
    output_dtype: Any  # a torch dtype


def _deserialize(trt: ModuleType, data: bytes) -> Any:
    from edge_agent.backends.tensorrt_common import TensorRTLogger

    runtime = trt.Runtime(TensorRTLogger())
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TensorRTBuildError("TensorRT cannot deserialize the engine torch-tensorrt wrote")
    return engine


def engine_io(trt: ModuleType, engine: Any) -> EngineIO:
    """Input and output names of the engine: torch-tensorrt names the input after the
    ExportedProgram's placeholder (timm: ``x``) and the output ``output0``, so they are read,
    never assumed; the manifest records them for the agent."""
    import torch

    inputs: list[str] = []
    outputs: list[str] = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        (inputs if mode == trt.TensorIOMode.INPUT else outputs).append(name)
    if len(inputs) != 1 or len(outputs) != 1:
        raise TensorRTBuildError(
            f"the engine has inputs {inputs} and outputs {outputs}; a classifier has one of each"
        )
    dtype = engine.get_tensor_dtype(outputs[0])
    torch_dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}.get(dtype)
    if torch_dtype is None:
        raise TensorRTBuildError(f"the engine's output {outputs[0]!r} is {dtype}, not FP32/FP16")
    return EngineIO(inputs[0], outputs[0], torch_dtype)


def engine_predict(
    trt: ModuleType, engine: Any, io: EngineIO, max_batch: int, device: str = "cuda"
) -> Callable[[np.ndarray], np.ndarray]:
    """Top-1 class ids of model inputs, computed by the engine (the gate's candidate).

    Inputs and outputs are torch tensors on ``device``; TensorRT reads and writes them in place
    (``set_tensor_address``) on a torch CUDA stream.
    """
    import torch

    context = engine.create_execution_context()
    if context is None:
        raise TensorRTBuildError("TensorRT could not create an execution context for the engine")

    def predict(images: np.ndarray) -> np.ndarray:
        stream = torch.cuda.Stream() if device.startswith("cuda") else None
        handle = stream.cuda_stream if stream is not None else 0
        out = []
        for start in range(0, len(images), max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + max_batch]))
            chunk = chunk.to(device=device, dtype=torch.float32).contiguous()
            logits = torch.empty((len(chunk), 10), dtype=io.output_dtype, device=device)
            context.set_input_shape(io.input_name, tuple(chunk.shape))
            context.set_tensor_address(io.input_name, chunk.data_ptr())
            context.set_tensor_address(io.output_name, logits.data_ptr())
            if not context.execute_async_v3(handle):
                raise TensorRTBuildError("TensorRT failed to run the engine on the gate images")
            if stream is not None:
                stream.synchronize()
            out.append(logits.float().argmax(dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    return predict


def _check_request(request: BuildRequest) -> Precision:
    """What only this path refuses; the common checks are :func:`build_engine.request.validate`'s."""
    if request.checkpoint is None:
        raise UsageError(
            "--plan-builder torch-tensorrt compiles the torch model: give --checkpoint RUN "
            "(an --onnx file has no torch model; use the default --plan-builder tensorrt)"
        )
    if request.backend not in ("auto", "tensorrt"):
        raise UsageError(
            f"--plan-builder torch-tensorrt makes a TensorRT plan; drop --backend {request.backend}"
        )
    precision: Precision = request.precision or "fp16"
    enabled_precisions(precision)  # raises for int8 and bf16
    if request.dla_core is not None:
        raise PrecisionError(
            "--dla-core is built by the default --plan-builder tensorrt only; drop one of them"
        )
    if request.calib_data is not None or request.fallback is not None:
        raise UsageError("--calib-data and --fallback are for INT8, which this path does not build")
    return precision


def build_with_torch_tensorrt(
    request: BuildRequest,
    device: DeviceInfo,
    log: Callable[[str], None],
    *,
    torch_device: str = "cuda",
) -> Manifest:
    """Build the bundle of ``request`` with a torch-tensorrt engine as ``model.plan``; returns
    the written manifest."""
    from build_engine.bundle import write_bundle
    from build_engine.device import import_tensorrt, l4t_release
    from build_engine.export import export_checkpoint
    from build_engine.images import load_gate_only
    from build_engine.request import validate
    from build_engine.source import exported_source

    precision = _check_request(request)
    torch_trt = import_torch_tensorrt()
    trt = import_tensorrt()
    if trt is None or device.tensorrt_version is None:
        raise PrecisionError(
            "--plan-builder torch-tensorrt: TensorRT does not import here; a plan needs the device"
        )
    if device.gpu_name is None or device.compute_capability is None:
        raise TensorRTBuildError(
            "cannot read the GPU's name and compute capability; the manifest records them, so "
            "the plan is not built"
        )
    validate(request, "tensorrt", precision, device)
    from training.checkpoint import load_for_export

    assert request.checkpoint is not None
    with tempfile.TemporaryDirectory(prefix="build-engine-") as tmp:
        scratch = Path(tmp)
        log(f"exporting {request.checkpoint} to ONNX (the FP32 reference and the staleness key)")
        source = exported_source(export_checkpoint(request.checkpoint, scratch / "source.onnx"))
        loaded = load_for_export(request.checkpoint)
        b = request.batch
        log(f"torch.export of {loaded.model_name}: batch dynamic over {b.min}..{b.max}")
        program, _example = export_program(loaded.model, loaded.input_size, b, torch_device)
        log(
            f"compiling with torch-tensorrt {getattr(torch_trt, '__version__', '?')} "
            f"({SUPPORTED[precision]}, batch {b.min}/{b.opt}/{b.max}); a first build takes minutes"
        )
        with bar("torch-tensorrt", 1, request.progress) as shown:
            data = compile_engine(
                torch_trt,
                program,
                precision=precision,
                input_size=loaded.input_size,
                batch=b,
                workspace_bytes=request.workspace_mb << 20,
                timing_cache=request.timing_cache,
            )
            shown.update()
        plan = scratch / PLAN_NAME
        write_file_atomic(plan, data)
        engine = _deserialize(trt, data)
        io = engine_io(trt, engine)
        log(f"engine: {len(data)} bytes, input {io.input_name!r}, output {io.output_name!r}")
        accuracy: AccuracyGate | None = None
        if precision == "fp16" and request.gate_data is not None:
            gate_data = load_gate_only(
                request.gate_data, request.gate_size, source.spec, source.decode.decoder()
            )
            accuracy = gate_mod.evaluate(
                source.path,
                source.path,
                gate_data,
                threshold_points=request.gate_threshold,
                min_images=request.gate_min_images,
                progress=request.progress,
                candidate_predict=engine_predict(trt, engine, io, b.max, torch_device),
            )
            log(gate_mod.describe(accuracy, "fp16 (torch-tensorrt engine)"))
            gate_mod.enforce(accuracy, "fp16")
        files: dict[str, Path] = {PLAN_NAME: plan}
        kernel_info: KernelInfo | None = None
        if request.kernels is not False:
            from build_engine.kernels import compile_into

            kernel_info, kernel_files = compile_into(scratch, device.arch, log)
            files.update(kernel_files)
        manifest = source.manifest(
            backend="tensorrt",
            precision=precision,
            model_file=PLAN_NAME,
            input_name=io.input_name,
            output_name=io.output_name,
            batch=b,
            quantization=Quantization(),
            accuracy_gate=accuracy,
            tensorrt=TensorRTInfo(
                version=str(getattr(trt, "__version__", device.tensorrt_version)),
                gpu_name=device.gpu_name,
                compute_capability=device.compute_capability,
                dla_core=None,
                l4t_release=l4t_release(),
                workspace_bytes=request.workspace_mb << 20,
                timing_cache=str(request.timing_cache) if request.timing_cache else None,
                plan_builder=f"torch-tensorrt {getattr(torch_trt, '__version__', 'unknown')}",
            ),
            kernels=kernel_info,
        )
        written = write_bundle(request.out, files, manifest)
    log(f"wrote tensorrt {precision} bundle (torch-tensorrt engine) to {request.out}")
    return written


__all__ = [
    "PLAN_BUILDERS",
    "build_with_torch_tensorrt",
    "compile_engine",
    "engine_io",
    "engine_predict",
    "export_program",
    "import_torch_tensorrt",
]
