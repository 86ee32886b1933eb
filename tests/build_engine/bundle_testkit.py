"""Helpers of build-engine's tests: a minimal valid manifest (fields overridable), and what the
training side hands to the export when a test fakes it."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.manifest import (
    Calibration,
    Manifest,
    ModelInfo,
    TrainingProvenance,
    official_classes,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec


@dataclass
class FakeLoaded:
    """What ``training.checkpoint.load_for_export`` returns (``ExportableModel``'s fields)."""

    model: Any
    model_name: str
    num_classes: int
    input_size: int
    provenance: TrainingProvenance
    spec: PreprocessSpec = DEFAULT_SPEC
    calibration: Calibration | None = None
    decode: DecodeSpec = field(default_factory=DecodeSpec)


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


def write_labelled_set(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` random RGB images of varied sizes with labels cycling over the 10 classes."""
    import cv2

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 64), (80, 96), (120, 70), (64, 64), (99, 101)]
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i in range(count):
            h, w = sizes[i % len(sizes)]
            image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            name = f"img_{i:03d}.png"
            cv2.imwrite(str(root / name), image)
            writer.writerow([name, i % 10])
    return root / "labels.csv"
