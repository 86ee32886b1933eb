"""Build a TensorRT plan from an ONNX file whose precision is explicit (TensorRT 10 API).

Imported only where TensorRT imports (the caller checks with
:func:`build_engine.device.import_tensorrt`). The network is strongly typed: the ONNX's own
types ARE the precision (an FP16-converted ONNX builds an FP16 plan, Q/DQ nodes build INT8), so
no precision flag and no calibrator is ever set. That is also what TensorRT 11 requires, where
the precision flags and calibrators are gone and every network is strongly typed; the flags
this module does use are looked up by name so that their absence in a later release is a
clear message, not an ``AttributeError``.

Builds take minutes on a Jetson: a progress monitor prints each optimiser phase, and the timing
cache is persisted (loaded before, saved after) so that rebuilds reuse the tactic timings.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import tensorrt as trt

from build_engine.bundle import write_file_atomic
from build_engine.device import gpu, l4t_release
from build_engine.errors import PrecisionError, TensorRTBuildError
from edge_agent.backends.tensorrt_common import TensorRTLogger
from edge_agent.contract.manifest import BatchProfile, TensorRTInfo

log = logging.getLogger(__name__)

INPUT_NAME = "input"  # what build-engine's export names it; the pipeline passes the graph's


class BuildProgress(trt.IProgressMonitor):
    """Prints the optimiser's phases as plain lines (TensorRT calls it from several threads).

    A phase's start and end are always printed; its steps at most every ``interval_s``.
    :meth:`cancel` makes the next ``step_complete`` ask TensorRT to stop the build.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 2.0) -> None:
        trt.IProgressMonitor.__init__(self)
        self._stream = stream if stream is not None else sys.stderr
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}
        self._depth: dict[str, int] = {}
        self._last_print = 0.0
        self._cancelled = threading.Event()
        self._started = time.monotonic()

    def _print(self, phase: str, text: str) -> None:
        indent = "  " * self._depth.get(phase, 0)
        elapsed = time.monotonic() - self._started
        self._stream.write(f"[TensorRT {elapsed:6.1f}s] {indent}{phase}: {text}\n")
        self._stream.flush()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            self._steps[phase_name] = num_steps
            parent_depth = self._depth.get(parent_phase, -1) if parent_phase else -1
            self._depth[phase_name] = parent_depth + 1
            self._print(phase_name, f"started ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last_print >= self._interval_s:
                self._last_print = now
                self._print(phase_name, f"step {step + 1}/{self._steps.get(phase_name, '?')}")
        return not self._cancelled.is_set()

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self._print(phase_name, "done")
            self._steps.pop(phase_name, None)

    def cancel(self) -> None:
        self._cancelled.set()


def network_flags() -> int:
    """``STRONGLY_TYPED`` where this TensorRT has the flag (10.x); 0 where it is implicit (11)."""
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = getattr(flags, "STRONGLY_TYPED", None) if flags is not None else None
    return 0 if strongly_typed is None else 1 << int(strongly_typed)


def optional_builder_flag(name: str) -> Any:
    """``trt.BuilderFlag.<name>``, or ``None`` where this TensorRT has no such flag."""
    return getattr(trt.BuilderFlag, name, None)


def parser_errors(parser: trt.OnnxParser) -> list[str]:
    """One line per ONNX parser error: node index, name, operator and description."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = f"node {error.node()}"
        name, op = error.node_name(), error.node_operator()
        if name or op:
            where += f" {name!r} ({op})"
        lines.append(f"{where}: {error.desc()}")
    return lines


def _timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        if data:
            log.info("reusing the timing cache %s (%d bytes)", path, len(data))
        return
    # A cache from another TensorRT version or device: the build starts without it and the
    # save afterwards replaces it. Only build time is at stake, never the plan's results.
    log.warning("timing cache %s does not fit this TensorRT or GPU; starting a new one", path)
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise TensorRTBuildError("TensorRT could not create an empty timing cache")


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        raise TensorRTBuildError(f"{path}: TensorRT returned no timing cache to save")
    write_file_atomic(path, bytes(memoryview(cache.serialize())))


def _use_dla(builder: trt.Builder, config: trt.IBuilderConfig, core: int) -> None:
    available = int(builder.num_DLA_cores)
    if not 0 <= core < available:
        raise PrecisionError(
            f"DLA core {core} asked for, this device has {available} DLA core(s) "
            "(Orin Nano has none); drop --dla-core or pick 0..N-1"
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    fallback = optional_builder_flag("GPU_FALLBACK")
    if fallback is None:
        raise PrecisionError(
            "this TensorRT has no GPU_FALLBACK flag, so every layer would have to run on the "
            "DLA; build without --dla-core"
        )
    config.set_flag(fallback)


def _input_chw(
    network: trt.INetworkDefinition, onnx_path: Path, input_name: str
) -> tuple[int, list[int]]:
    names = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        names.append(tensor.name)
        if tensor.name == input_name:
            dims = tensor.shape
            shape = [int(dims[i]) for i in range(len(dims))]
            if len(shape) != 4 or any(d < 1 for d in shape[1:]):
                raise TensorRTBuildError(
                    f"{onnx_path}: input {input_name!r} has shape {shape}; export it as "
                    "N x 3 x S x S with only the batch dynamic"
                )
            return shape[0], shape[1:]
    raise TensorRTBuildError(f"{onnx_path}: no input named {input_name!r} (inputs: {names})")


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    batch: BatchProfile,
    workspace_bytes: int,
    dla_core: int | None,
    timing_cache: Path | None,
    progress: bool = True,
    input_name: str = INPUT_NAME,
) -> TensorRTInfo:
    """Parse ``onnx_path``, build a plan for this GPU and write it atomically to ``plan_path``.

    ``input_name`` is the graph's input (the pipeline reads it from the ONNX file), whose batch
    dimension gets the optimisation profile.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise TensorRTBuildError(f"{onnx_path}: no such ONNX file")
    if not batch.min <= batch.opt <= batch.max:
        raise TensorRTBuildError(f"batch profile must satisfy min <= opt <= max, got {batch}")
    if workspace_bytes < 1:
        raise TensorRTBuildError(
            f"workspace must be a positive number of bytes, got {workspace_bytes}"
        )
    gpu_name, capability = gpu()
    if gpu_name is None or capability is None:
        raise TensorRTBuildError(
            "cannot read the GPU's name and compute capability (needs cuda-python, pycuda or "
            "nvidia-smi); the manifest records them, so the plan is not built"
        )
    logger = TensorRTLogger()
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # "factory function returned nullptr": no usable GPU
        raise TensorRTBuildError(
            f"TensorRT could not create a builder ({exc}); is the GPU visible?"
        ) from exc
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTBuildError(
            f"{onnx_path}: TensorRT's ONNX parser failed:\n" + "\n".join(parser_errors(parser))
        )
    static_batch, chw = _input_chw(network, onnx_path, input_name)
    if static_batch != -1 and not batch.min == batch.max == static_batch:
        raise TensorRTBuildError(
            f"{onnx_path}: the ONNX has a static batch of {static_batch}; export it with a "
            f"dynamic batch or ask for min = opt = max = {static_batch}"
        )
    profile = builder.create_optimization_profile()
    profile.set_shape(
        input_name,
        trt.Dims([batch.min, *chw]),
        trt.Dims([batch.opt, *chw]),
        trt.Dims([batch.max, *chw]),
    )
    config = builder.create_builder_config()
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTBuildError(f"TensorRT rejected the batch profile {batch} for {chw}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    _timing_cache(config, timing_cache)
    if dla_core is not None:
        _use_dla(builder, config, dla_core)
    monitor = BuildProgress() if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reason = "; ".join(logger.errors[-5:]) or "no reason given"
        raise TensorRTBuildError(f"{onnx_path}: TensorRT could not build a plan: {reason}")
    try:
        write_file_atomic(plan_path, memoryview(serialized))
        if timing_cache is not None:
            _save_timing_cache(config, timing_cache)
    except OSError as exc:
        raise TensorRTBuildError(
            f"{exc.filename or plan_path}: cannot write ({exc.strerror})"
        ) from exc
    return TensorRTInfo(
        version=str(getattr(trt, "__version__", "unknown")),
        gpu_name=gpu_name,
        compute_capability=capability,
        dla_core=dla_core,
        l4t_release=l4t_release(),
        workspace_bytes=workspace_bytes,
        timing_cache=str(timing_cache) if timing_cache is not None else None,
    )
