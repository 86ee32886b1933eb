"""Real Galaxy10 galaxies in synthetic wide fields: shared by the wide-field tests."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.fields.process import Cutout

SAMPLE = Path(__file__).resolve().parents[4] / "shared" / "data" / "galaxy10-sample"


@dataclass
class Galaxy:
    file: str
    label: int
    rgb: np.ndarray  # uint8 256 x 256 x 3, as the survey made it


def load_galaxies(count: int, offset: int = 0) -> list[Galaxy]:
    """``count`` real galaxies spread over the classes (the sample's CSV is by class)."""
    labels = SAMPLE / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"the real Galaxy10 sample is absent ({SAMPLE}); CI mounts it at ../shared")
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // count)
    chosen = rows[offset::step][:count]
    out = []
    for row in chosen:
        bgr = cv2.imread(str(SAMPLE / row["file"]), cv2.IMREAD_COLOR)
        assert bgr is not None, row["file"]
        out.append(Galaxy(row["file"], int(row["label"]), np.ascontiguousarray(bgr[:, :, ::-1])))
    return out


def nearest(cutouts: list[Cutout], x: float, y: float) -> tuple[Cutout | None, float]:
    """The cut-out closest to (x, y) and its distance in pixels."""
    best, dist = None, math.inf
    for c in cutouts:
        d = math.hypot(c.x - x, c.y - y)
        if d < dist:
            best, dist = c, d
    return best, dist


def found_within(cutouts: list[Cutout], truth: list[tuple[float, float]], px: float) -> int:
    return sum(nearest(cutouts, x, y)[1] <= px for x, y in truth)
