"""ONNX Runtime backend: the CPU path everywhere, and its CUDA provider where it is present.

Preprocessing stays on the CPU reference (the base class); the model's input type decides
whether the batch is fed as float32 or float16. A model exported with a fixed batch size is
padded up to it and the padding's outputs dropped, so partial batches still run.

Streams (``pipeline.inference_streams``): with ``streams`` > 1 a batch of at least two frames
is split into ``streams`` parts that run at the same time, each on its own share of the threads
(a second session, ``intra_op_threads // streams`` threads each). On a small CPU this beats one
run over all threads: no worker waits for another between the model's many small operators,
and a worker preempted by the agent's decoding thread delays only its own part. A lone frame
still runs on all threads (the first session), for latency. bench/bench_agent.py measures both.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.backends.base import Backend, BackendError
from edge_agent.contract.manifest import Manifest

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        *,
        use_cuda: bool = False,
        intra_op_threads: int | None = None,
        spinning: bool = False,
        streams: int = 1,
    ) -> None:
        super().__init__(bundle_dir, manifest)
        import onnxruntime as ort  # the runtime's heaviest import: only when this backend is used

        if manifest.backend != "onnxruntime":
            raise BackendError(f"{bundle_dir}: a {manifest.backend} bundle, not an onnxruntime one")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        # ORT's workers busy-wait between parallel sections by default. In the agent the decode
        # thread shares the cores with them, and a spinning worker it preempts stalls the whole
        # parallel section; without spinning the workers sleep and the cores are shared fairly.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        providers = ["CPUExecutionProvider"]
        if use_cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    "pipeline.onnxruntime_cuda is set but this onnxruntime has no "
                    "CUDAExecutionProvider; install onnxruntime-gpu or turn the option off"
                )
            providers.insert(0, "CUDAExecutionProvider")
        path = self.bundle_dir / manifest.model_file
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:  # ORT raises its own untyped errors (Fail, InvalidGraph, ...)
            raise BackendError(f"{path}: ONNX Runtime cannot load the model ({exc})") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if manifest.input_name not in inputs or manifest.output_name not in outputs:
            raise BackendError(
                f"{path}: model has inputs {sorted(inputs)} and outputs {sorted(outputs)}, the "
                f"manifest names {manifest.input_name!r} -> {manifest.output_name!r}; rebuild"
            )
        spec = inputs[manifest.input_name]
        self.input_dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        batch_dim = spec.shape[0] if spec.shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.providers = self.session.get_providers()
        # Parts of a batch run at once on a session with a share of the threads (see above);
        # not with a fixed batch size (each part would be padded to it) nor on CUDA.
        self.streams = streams if self.fixed_batch is None and not use_cuda else 1
        self._stream_session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        if self.streams > 1:
            total = intra_op_threads or os.cpu_count() or 1
            part = ort.SessionOptions()
            part.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            part.intra_op_num_threads = max(1, total // self.streams)
            part.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._stream_session = ort.InferenceSession(
                str(path), sess_options=part, providers=providers
            )
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="ort-stream")

    @property
    def max_batch(self) -> int:
        return self.fixed_batch or self.manifest.batch.max

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n == 0:
            raise BackendError("cannot run an empty batch")
        if n > self.max_batch:
            parts = [self.infer(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return np.concatenate(parts)
        feed = batch.astype(self.input_dtype, copy=False)
        if self.fixed_batch is not None and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *feed.shape[1:]), dtype=feed.dtype)
            feed = np.concatenate([feed, pad])
        try:
            if self._pool is not None and n >= 2:
                parts = np.array_split(feed, min(self.streams, n))
                futures = [self._pool.submit(self._run, self._stream_session, p) for p in parts]
                out = np.concatenate([f.result() for f in futures])
            else:
                out = self._run(self.session, feed)
        except Exception as exc:  # see above: ORT's errors have no common Python base
            raise BackendError(f"ONNX Runtime failed on a batch of {n}: {exc}") from exc
        return np.asarray(out[:n], dtype=np.float32)

    def _run(self, session: Any, feed: np.ndarray) -> np.ndarray:
        out = session.run([self.manifest.output_name], {self.manifest.input_name: feed})[0]
        return np.asarray(out)

    def warmup(self) -> None:
        """A lone frame, and a batch for every stream (each session pays its set-up now)."""
        s = self.manifest.preprocess.input_size
        for n in (1, self.streams) if self.streams > 1 else (1,):
            self.infer(np.zeros((n, 3, s, s), dtype=np.float32))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
