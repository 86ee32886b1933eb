"""OpenVINO bundles: compile the chosen ONNX for this CPU, time it, and cache the compiled model.

Three precisions, each a candidate that must pass the accuracy gate like any other:
- ``fp32``: the FP32 ONNX with ``INFERENCE_PRECISION_HINT=f32``;
- ``bf16``: the same ONNX with the hint ``bf16`` (only where the CPU has AMX or AVX-512 BF16:
  elsewhere OpenVINO emulates it and it is slower, so it is not offered);
- ``int8``: the explicit Q/DQ ONNX that TensorRT takes too, other layers in FP32.
The compiled model (``export_model``) is written into the bundle with the OpenVINO version and
the CPU's instruction sets as its key (:class:`edge_agent.contract.manifest.OpenVinoInfo`).
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from build_engine.errors import PrecisionError
from edge_agent.backends.openvino_backend import compile_config
from edge_agent.backends.openvino_host import OpenVinoHost, probe
from edge_agent.contract.manifest import OpenVinoInfo

InferencePrecision = Literal["f32", "bf16"]
COMPILED_FILE = "model.ov.blob"


def openvino_host() -> OpenVinoHost:
    """This host; raises :class:`PrecisionError` when openvino is not installed."""
    host = probe()
    if host.version is None:
        raise PrecisionError(
            "--backend openvino: openvino does not import here; pip install 'galaxy-edge[openvino]'"
        )
    return host


def inference_precision(precision: str, host: OpenVinoHost) -> InferencePrecision:
    """The precision hint for a bundle precision, refusing BF16 where the CPU has no BF16 units."""
    if precision == "bf16":
        if not host.has_bf16:
            raise PrecisionError(
                f"--precision bf16: {host.cpu_name or 'this CPU'} has neither AMX nor AVX-512 BF16 "
                "(OpenVINO would emulate it, slower than FP32); use fp32 or int8"
            )
        return "bf16"
    if precision in ("fp32", "int8"):
        return "f32"
    raise PrecisionError(
        f"--precision {precision} is not built for OpenVINO; use fp32, bf16 or int8"
    )


def _compile(onnx: Path, hint: InferencePrecision, threads: int | None = None) -> Any:
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(onnx)), "CPU", compile_config(hint, threads))


def predict(
    onnx: Path, hint: InferencePrecision, images: np.ndarray, batch: int = 16
) -> np.ndarray:
    """Top-1 class ids of ``images`` (N x 3 x S x S float32) under OpenVINO with ``hint``."""
    request = _compile(onnx, hint).create_infer_request()
    out = []
    for start in range(0, len(images), batch):
        result = request.infer({0: np.ascontiguousarray(images[start : start + batch])})
        out.append(np.asarray(result[0]).argmax(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Timing:
    """Median milliseconds per image at batch 1 and at the batch profile's ``opt``."""

    ms_b1: float
    ms_opt: float
    opt: int


def time_candidate(
    onnx: Path, hint: InferencePrecision, size: int, opt: int, rounds: int = 5
) -> Timing:
    """Time one candidate on this CPU (after a warm-up), medians of ``rounds`` runs."""
    request = _compile(onnx, hint).create_infer_request()
    rng = np.random.default_rng(0)
    one = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    many = rng.uniform(-1, 1, (opt, 3, size, size)).astype(np.float32)
    request.infer({0: one})
    request.infer({0: many})
    b1, bopt = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        request.infer({0: one})
        t1 = time.perf_counter()
        request.infer({0: many})
        t2 = time.perf_counter()
        b1.append((t1 - t0) * 1e3)
        bopt.append((t2 - t1) * 1e3 / opt)
    return Timing(statistics.median(b1), statistics.median(bopt), opt)


def write_compiled(
    onnx: Path, out_dir: Path, hint: InferencePrecision, host: OpenVinoHost
) -> tuple[Path, OpenVinoInfo]:
    """Compile ``onnx`` for this CPU and export it to ``out_dir/model.ov.blob``."""
    compiled = _compile(onnx, hint)
    path = Path(out_dir) / COMPILED_FILE
    stream = io.BytesIO()  # export_model takes a BytesIO only
    compiled.export_model(stream)
    path.write_bytes(stream.getbuffer())
    info = OpenVinoInfo(
        version=str(host.version),
        device="CPU",
        cpu_name=host.cpu_name,
        isa=list(host.isa),
        inference_precision=hint,
        compiled_file=COMPILED_FILE,
    )
    return path, info
