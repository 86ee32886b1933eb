"""Helpers of the training tests: an easy synthetic labelled set and tiny-run settings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.contract.classes import CLASSES

# Official ids on purpose not 0..2: the head has 10 outputs and ids must survive end to end.
EASY_CLASSES = (2, 5, 8)
TINY_MODEL = "test_efficientnet"  # timm's 0.1 M-parameter test network


def easy_image(cls: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A galaxy-like blob whose colour and shape say its class; rotation-invariant on purpose,
    since training rotates over the full circle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.uniform(-2, 2, size=2)
    r = np.hypot(xx - cx, yy - cy) / size
    image = rng.normal(12, 4, (size, size, 3))
    if cls == EASY_CLASSES[0]:  # red disc
        image[..., 0] += 220 * (r < rng.uniform(0.18, 0.25))
    elif cls == EASY_CLASSES[1]:  # green ring
        image[..., 1] += 220 * ((r > 0.2) & (r < 0.3))
    else:  # blue diffuse glow
        image[..., 2] += 200 * np.exp(-((r / 0.25) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_easy_folder(root: Path, per_class: int, seed: int = 0, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    for cls in EASY_CLASSES:
        folder = root / CLASSES[cls].slug
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = easy_image(cls, rng, size)
            cv2.imwrite(str(folder / f"img_{i:03d}.png"), rgb[:, :, ::-1])
    return root


def tiny_config_values(data: Path, out: Path, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "model": TINY_MODEL,
        "image_size": 32,
        "batch_size": 16,
        "epochs": 3,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "device": "cpu",
        "progress": False,
    }
    values.update(overrides)
    return values


def flip_bytes(path: Path, count: int = 400) -> None:
    """Invert ``count`` bytes in the middle of ``path`` (inside a checkpoint's tensor data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
