"""On a CUDA GPU: --device auto picks it, mixed precision trains, augmentation runs there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_testkit import tiny_config_values

from training.config import AugmentConfig, make_config
from training.data import augment_batch
from training.runtime import resolve_device
from training.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)"),
]


def test_auto_device_amp_training_learns(easy_folder: Path, tmp_path: Path) -> None:
    assert resolve_device("auto").type == "cuda"
    values = tiny_config_values(
        easy_folder, tmp_path / "run", epochs=10, patience=10, device="auto"
    )
    metrics = train(make_config(values), echo=lambda _: None)
    assert metrics["device"].startswith("cuda") and metrics["amp"] in ("bfloat16", "float16")
    assert metrics["test"]["accuracy"] >= 0.85
    assert metrics["cuda_peak_bytes"] > 0


def test_augmentation_runs_on_the_gpu_like_on_the_cpu() -> None:
    batch = torch.rand(4, 3, 32, 32) * 2 - 1
    config = AugmentConfig(rotate=False, flip=False, zoom_min=1.0, zoom_max=1.0, translate=0.0)
    on_gpu = augment_batch(batch.cuda(), config)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), augment_batch(batch, config), atol=1e-5, rtol=0)
