"""The backend for a bundle: ONNX Runtime or TensorRT, chosen by the bundle, checked against config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edge_agent.backends.base import Backend, BackendError
from edge_agent.contract.manifest import Manifest

BackendKind = Literal["auto", "onnxruntime", "tensorrt", "openvino"]


def create_backend(
    bundle_dir: Path,
    manifest: Manifest,
    kind: BackendKind = "auto",
    *,
    use_cuda: bool = False,
    intra_op_threads: int | None = None,
    spinning: bool = False,
    streams: int = 1,
) -> Backend:
    """Load the bundle's model in the backend it was built for.

    ``kind`` other than ``auto`` must match the bundle: a plan cannot run in ONNX Runtime and an
    ONNX file is not a TensorRT plan, so a mismatch is an error that says what to rebuild.
    """
    if kind != "auto" and kind != manifest.backend:
        raise BackendError(
            f"{bundle_dir}: bundle is for {manifest.backend} but pipeline.backend is {kind}; "
            f"run build-engine --backend {kind} or set pipeline.backend: auto"
        )
    if manifest.backend == "onnxruntime":
        from edge_agent.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            bundle_dir,
            manifest,
            use_cuda=use_cuda,
            intra_op_threads=intra_op_threads,
            spinning=spinning,
            streams=streams,
        )
    if manifest.backend == "openvino":
        from edge_agent.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(bundle_dir, manifest, threads=intra_op_threads, streams=streams)
    try:
        from edge_agent.backends import tensorrt_backend
    except ImportError as exc:
        raise BackendError(
            f"{bundle_dir}: TensorRT bundle, but {exc.name or 'tensorrt'} does not import here "
            "(TensorRT and pycuda come with JetPack); use an ONNX Runtime bundle "
            "(build-engine --backend onnxruntime) on hosts without them"
        ) from exc
    return tensorrt_backend.TensorRTBackend(bundle_dir, manifest)
