"""A minimal valid bundle manifest for build-engine's tests (fields overridable)."""

from __future__ import annotations

from edge_agent.contract.manifest import Manifest, ModelInfo, official_classes
from edge_agent.contract.preprocess import DEFAULT_SPEC


def manifest_for(
    backend: str = "onnxruntime", precision: str = "fp32", **extra: object
) -> Manifest:
    data: dict[str, object] = {
        "created": "2026-11-26T00:00:00+00:00",
        "builder": "test",
        "model": ModelInfo(name="tiny", classes=official_classes()),
        "preprocess": DEFAULT_SPEC,
        "backend": backend,
        "precision": precision,
        "model_file": "model.plan" if backend == "tensorrt" else "model.onnx",
        "source_onnx_sha256": "a" * 64,
    }
    data.update(extra)
    return Manifest.model_validate(data)
