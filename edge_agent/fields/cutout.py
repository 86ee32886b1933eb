"""Galaxy10-like framing: a square around each galaxy, scaled to its size, then the model's size.

The side is ``framing_r50`` times the galaxy's half-light radius (the ratio measured on the real
Galaxy10 sample), within ``[min_side_px, max_side_px]``. What falls outside the frame is filled
with zero flux (sky after background subtraction). Rows are flipped from FITS order (bottom-up)
to the top-down order of an image, as the contract decoder does, then the bands are composed in
colour (:mod:`edge_agent.fields.colour`) and resized to the model's input with area averaging
(shrinking) or bilinear interpolation (enlarging).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_agent.fields.colour import auto_flux_scale, compose_rgb
from edge_agent.fields.settings import FieldsConfig


def cutout_side(r50: float, settings: FieldsConfig) -> int:
    side = round(settings.framing_r50 * max(r50, 0.0))
    return max(settings.min_side_px, min(settings.max_side_px, side))


def cut(bands: np.ndarray, x: float, y: float, side: int) -> np.ndarray:
    """bands x side x side centred on pixel position (x, y), zero outside the frame."""
    nb, h, w = bands.shape
    x0 = math.floor(x - (side - 1) / 2.0 + 0.5)  # round half up, the same on both sides of 0
    y0 = math.floor(y - (side - 1) / 2.0 + 0.5)
    out = np.zeros((nb, side, side), dtype=np.float32)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = bands[:, sy0:sy1, sx0:sx1]
    return out


def stamp_flux_scale(
    bands: np.ndarray, x: float, y: float, side: int, settings: FieldsConfig
) -> float:
    """The flux scale that would give this one cut-out a typical Galaxy10 brightness."""
    return auto_flux_scale(cut(bands, x, y, side), settings.reference_p99)


def cutout_image(
    bands: np.ndarray, x: float, y: float, side: int, flux_scale: float, input_size: int
) -> np.ndarray:
    """The model's view of one galaxy: uint8 input_size x input_size x 3 RGB."""
    stamp = cut(bands, x, y, side)[:, ::-1, :]
    rgb = compose_rgb(stamp, flux_scale)
    if side == input_size:
        return rgb
    interp = cv2.INTER_AREA if side > input_size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (input_size, input_size), interpolation=interp))
