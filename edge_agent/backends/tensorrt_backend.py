"""TensorRT backend: a bundle's ``model.plan`` run through pycuda on one CUDA stream.

Imported only when a TensorRT bundle is loaded (the only module of ``edge_agent``, with
:mod:`edge_agent.backends.cuda_preprocess`, that touches TensorRT or pycuda). Before the plan is
deserialised the manifest is checked against this TensorRT, GPU name and compute capability
(:func:`edge_agent.contract.manifest.check_device`): a plan built elsewhere is refused, never loaded.

Buffers are allocated once for the bundle's largest batch: engine input and output on the
device, page-locked host copies of both, all copies asynchronous on the one stream. Frames are
preprocessed on the GPU by the bundle's kernels straight into the engine's input buffer.
The CUDA context is the device's primary context (the one TensorRT's runtime uses), made
current around every call, so the pipeline thread may differ from the loading thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pycuda.driver as cuda  # pyright: ignore[reportMissingImports]
import tensorrt as trt

from edge_agent.backends.base import Backend, BackendError, BatchResult
from edge_agent.backends.cuda_preprocess import CudaPreprocessor, cuda_call
from edge_agent.backends.tensorrt_common import TensorRTLogger
from edge_agent.contract.errors import PreprocessError
from edge_agent.contract.manifest import Manifest, check_device
from edge_agent.contract.preprocess import ChannelOrder

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """One deserialised plan with its execution context, stream and buffers."""

    name = "tensorrt"

    def __init__(self, bundle_dir: Path, manifest: Manifest) -> None:
        super().__init__(bundle_dir, manifest)
        if manifest.backend != "tensorrt":
            raise BackendError(f"{bundle_dir}: a {manifest.backend} bundle, not a TensorRT one")
        cuda_call("cuInit", cuda.init)
        if cuda_call("count devices", cuda.Device.count) < 1:
            raise BackendError("no CUDA device is visible; check the container's GPU access")
        device = cuda.Device(0)
        major, minor = cuda_call("compute capability", device.compute_capability)
        check_device(
            manifest,
            tensorrt_version=str(getattr(trt, "__version__", "")),
            gpu_name=str(cuda_call("device name", device.name)),
            compute_capability=f"{major}.{minor}",
        )
        self._context_cuda: Any = cuda_call("retain primary context", device.retain_primary_context)
        self._closed = False
        self._logger = TensorRTLogger()
        try:
            with self._active():
                self._load()
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _active(self) -> Iterator[None]:
        if self._closed:
            raise BackendError("the TensorRT backend is closed")
        cuda_call("push CUDA context", self._context_cuda.push)
        try:
            yield
        finally:
            cuda_call("pop CUDA context", cuda.Context.pop)

    def _load(self) -> None:
        spec = self.manifest.preprocess
        plan_path = self.bundle_dir / self.manifest.model_file
        self.stream: Any = cuda_call("create stream", cuda.Stream)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise BackendError(
                f"{plan_path}: TensorRT could not deserialise the plan "
                f"({'; '.join(self._logger.errors) or 'no reason given'}); run build-engine again"
            )
        self.engine = engine
        self.input_name = self.manifest.input_name
        self.output_name = self.manifest.output_name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name, mode in (
            (self.input_name, trt.TensorIOMode.INPUT),
            (self.output_name, trt.TensorIOMode.OUTPUT),
        ):
            if name not in names or engine.get_tensor_mode(name) != mode:
                raise BackendError(
                    f"{plan_path}: the plan has no {mode.name} tensor {name!r} ({names})"
                )
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        if self.input_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise BackendError(f"{plan_path}: input {self.input_dtype} is neither fp32 nor fp16")
        s = spec.input_size
        dims = engine.get_tensor_shape(self.input_name)
        in_shape = tuple(int(dims[i]) for i in range(len(dims)))
        if in_shape[1:] != (3, s, s):
            raise BackendError(f"{plan_path}: input shape {in_shape}, the manifest says 3x{s}x{s}")
        profile_max = int(engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        if self.max_batch > profile_max:
            raise BackendError(
                f"{plan_path}: manifest batch max {self.max_batch} exceeds the plan's {profile_max}"
            )
        self.num_classes = len(self.manifest.model.classes)
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"{plan_path}: no execution context (out of GPU memory?)")
        self.context = context
        n = self.max_batch
        self.host_in: np.ndarray = cuda_call(
            "pinned input", cuda.pagelocked_empty, (n, 3, s, s), self.input_dtype
        )
        self.host_out: np.ndarray = cuda_call(
            "pinned output", cuda.pagelocked_empty, (n, self.num_classes), self.output_dtype
        )
        self.device_in: Any = cuda_call("device input", cuda.mem_alloc, self.host_in.nbytes)
        self.device_out: Any = cuda_call("device output", cuda.mem_alloc, self.host_out.nbytes)
        for name, buffer in (
            (self.input_name, self.device_in),
            (self.output_name, self.device_out),
        ):
            if not self.context.set_tensor_address(name, int(buffer)):
                raise BackendError(f"{plan_path}: TensorRT refused the address of {name!r}")
        self.preprocessor: CudaPreprocessor | None = None
        kernels = self.manifest.kernels
        if kernels is not None and (kernels.cubin or kernels.ptx):
            self.preprocessor = CudaPreprocessor(
                self.bundle_dir / kernels.cubin if kernels.cubin else None,
                self.bundle_dir / kernels.ptx if kernels.ptx else None,
                spec,
            )
        else:
            log.warning("%s has no CUDA kernels: preprocessing on the CPU", self.bundle_dir)

    @property
    def preprocesses_on_device(self) -> bool:
        """True when the bundle brought CUDA kernels (loaded at start); else the CPU does it."""
        return self.preprocessor is not None

    def _check_count(self, n: int) -> None:
        if n < 1:
            raise PreprocessError("cannot run an empty batch")

    def _execute(self, n: int) -> np.ndarray:
        """Run the engine on the first ``n`` inputs already on the device; logits float32."""
        s = self.manifest.preprocess.input_size
        if not self.context.set_input_shape(self.input_name, (n, 3, s, s)):
            raise BackendError(f"TensorRT refused input shape {(n, 3, s, s)}")
        self._logger.errors.clear()
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError(
                "TensorRT execution failed: "
                + ("; ".join(self._logger.errors) or "no reason given")
            )
        cuda_call(
            "download logits",
            cuda.memcpy_dtoh_async,
            self.host_out[:n],
            self.device_out,
            self.stream,
        )
        cuda_call("synchronize", self.stream.synchronize)
        return np.array(self.host_out[:n], dtype=np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        s = self.manifest.preprocess.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise BackendError(f"input batch of shape {batch.shape}, expected N x 3 x {s} x {s}")
        n = batch.shape[0]
        self._check_count(n)
        if n > self.max_batch:  # the buffers hold max_batch: run the batch in parts
            step = self.max_batch
            return np.concatenate([self.infer(batch[i : i + step]) for i in range(0, n, step)])
        with self._active():
            self.host_in[:n] = batch
            cuda_call(
                "upload input",
                cuda.memcpy_htod_async,
                self.device_in,
                self.host_in[:n],
                self.stream,
            )
            return self._execute(n)

    def infer_frames(
        self, frames: Sequence[np.ndarray], frame_order: ChannelOrder = "RGB"
    ) -> BatchResult:
        """Preprocess on the GPU into the engine's input, then run; per-stage seconds."""
        if self.preprocessor is None:
            return super().infer_frames(frames, frame_order)
        self._check_count(len(frames))
        if len(frames) > self.max_batch:
            step = self.max_batch
            parts = [
                self.infer_frames(frames[i : i + step], frame_order)
                for i in range(0, len(frames), step)
            ]
            timings = {k: sum(p.timings[k] for p in parts) for k in parts[0].timings}
            return BatchResult(logits=np.concatenate([p.logits for p in parts]), timings=timings)
        with self._active():
            t0 = time.perf_counter()
            self.preprocessor.enqueue(
                frames, frame_order, int(self.device_in), self.input_dtype, self.stream
            )
            cuda_call("synchronize preprocessing", self.stream.synchronize)
            t1 = time.perf_counter()
            logits = self._execute(len(frames))
            t2 = time.perf_counter()
        return BatchResult(logits=logits, timings={"preprocess": t1 - t0, "infer": t2 - t1})

    def warmup(self) -> None:
        """One batch through the kernels and the engine (loads lazily initialised code)."""
        s = self.manifest.preprocess.input_size
        self.infer_frames([np.zeros((s, s, 3), dtype=np.uint8)])

    def close(self) -> None:
        """Free the buffers, the engine and the context; safe to call twice or after a failed load."""
        if self._closed:
            return
        with self._active():
            preprocessor = getattr(self, "preprocessor", None)
            if preprocessor is not None:
                preprocessor.close()
            for attr in ("device_in", "device_out"):
                buffer = getattr(self, attr, None)
                if buffer is not None:
                    cuda_call(f"free {attr}", buffer.free)
            for attr in ("context", "engine", "_runtime"):
                if hasattr(self, attr):
                    delattr(self, attr)
        self._closed = True
        self._context_cuda = None
