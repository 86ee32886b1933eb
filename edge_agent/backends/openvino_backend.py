"""OpenVINO backend: the fast path on Intel hosts (FP32, BF16 on AMX/AVX-512-BF16, INT8 Q/DQ).

The bundle caches the compiled model (``Core.export_model``) next to the ONNX it came from; it
is loaded with ``Core.import_model`` and the same precision hint it was compiled and gated with,
after checking that this host has the OpenVINO version and instruction sets it was made for
(otherwise the bundle is stale: ``build-engine --if-stale`` rebuilds it).

Threads: one synchronous infer request with ``INFERENCE_NUM_THREADS`` threads (default: all
cores) and CPU pinning off, so the agent's decoding thread shares a small CPU fairly with
inference instead of being starved by pinned busy workers. With ``streams`` > 1
(``pipeline.inference_streams``) the compiled model is imported a second time with that many
CPU streams (the threads shared among them) and a batch of at least two frames is split into
``streams`` parts run at once on their own infer requests, as OpenVINO's THROUGHPUT mode does;
a lone frame still runs on all threads, for latency.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.backends.base import Backend, BackendError
from edge_agent.backends.openvino_host import probe
from edge_agent.contract.errors import StaleBundleError
from edge_agent.contract.manifest import Manifest, OpenVinoInfo, check_openvino

log = logging.getLogger(__name__)


def compile_config(info_precision: str, threads: int | None) -> dict[str, Any]:
    """The CPU plugin settings a bundle's model is compiled and loaded with."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": info_precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self, bundle_dir: Path, manifest: Manifest, *, threads: int | None = None, streams: int = 1
    ) -> None:
        super().__init__(bundle_dir, manifest)
        if manifest.backend != "openvino" or manifest.openvino is None:
            raise BackendError(f"{bundle_dir}: a {manifest.backend} bundle, not an openvino one")
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError(
                f"{bundle_dir}: OpenVINO bundle, but openvino does not import here; "
                "install galaxy-edge[openvino] or build an ONNX Runtime bundle"
            ) from exc
        host = probe()
        try:
            check_openvino(manifest, version=host.version, isa=host.isa)
        except StaleBundleError as exc:
            raise BackendError(f"{bundle_dir}: {exc}") from exc
        info: OpenVinoInfo = manifest.openvino
        path = self.bundle_dir / info.compiled_file
        core = ov.Core()
        try:
            blob = io.BytesIO(path.read_bytes())  # import_model takes a BytesIO (or bytes)
            self.compiled = core.import_model(
                blob, info.device, compile_config(info.inference_precision, threads)
            )
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(
                f"{path}: OpenVINO cannot import the compiled model ({exc})"
            ) from exc
        names = {n for port in self.compiled.inputs for n in port.get_names()}
        outs = {n for port in self.compiled.outputs for n in port.get_names()}
        if manifest.input_name not in names or manifest.output_name not in outs:
            raise BackendError(
                f"{path}: model has inputs {sorted(names)} and outputs {sorted(outs)}, the "
                f"manifest names {manifest.input_name!r} -> {manifest.output_name!r}; rebuild"
            )
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.streams = streams
        self._parts: list[Any] = []
        if streams > 1:
            config = {
                **compile_config(info.inference_precision, self.threads),
                "PERFORMANCE_HINT": "THROUGHPUT",
                "NUM_STREAMS": streams,
            }
            try:
                parted = core.import_model(io.BytesIO(path.read_bytes()), info.device, config)
            except Exception as exc:
                raise BackendError(
                    f"{path}: OpenVINO cannot import the compiled model with {streams} streams "
                    f"({exc}); set pipeline.inference_streams: 1"
                ) from exc
            self._parts = [parted.create_infer_request() for _ in range(streams)]
        log.info(
            "openvino %s on %s: %s inference precision, %d threads",
            host.version,
            host.cpu_name,
            info.inference_precision,
            self.threads,
        )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n == 0:
            raise BackendError("cannot run an empty batch")
        if n > self.max_batch:
            parts = [self.infer(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return np.concatenate(parts)
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        name = self.manifest.input_name
        try:
            if self._parts and n >= 2:
                parts = np.array_split(feed, min(len(self._parts), n))
                requests = self._parts[: len(parts)]
                for request, part in zip(requests, parts, strict=True):
                    request.start_async({name: part})
                outs = []
                for request in requests:
                    request.wait()
                    outs.append(np.array(request.get_tensor(self.manifest.output_name).data))
                return np.concatenate(outs).astype(np.float32, copy=False)
            out = self.request.infer({name: feed})
        except Exception as exc:  # see above
            raise BackendError(f"OpenVINO failed on a batch of {n}: {exc}") from exc
        return np.asarray(out[self.compiled.output(self.manifest.output_name)], dtype=np.float32)

    def warmup(self) -> None:
        """A lone frame, and a batch for every stream (each request pays its set-up now)."""
        s = self.manifest.preprocess.input_size
        for n in (1, self.streams) if self.streams > 1 else (1,):
            self.infer(np.zeros((n, 3, s, s), dtype=np.float32))

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._parts = []
