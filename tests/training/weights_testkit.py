"""A small recorded weights file for the tests that need a checkpoint but no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from training.weights import record_weights


def recorded_weights(tmp_path: Path) -> Path:
    """``best.safetensors`` with one tensor and a config entry, its sha256 recorded."""
    path = tmp_path / "best.safetensors"
    save_file(
        {"w": np.arange(12, dtype=np.float32).reshape(3, 4)},
        str(path),
        metadata={"galaxy_edge_config": "{}"},
    )
    record_weights(path)
    return path
