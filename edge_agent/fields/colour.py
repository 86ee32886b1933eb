"""Bands to the 8-bit RGB the model was trained on: the Legacy Surveys' g, r, z composition.

Galaxy10 DECaLS images are the DESI Legacy Imaging Surveys' colour JPEGs (legacypipe's
``dr2_rgb``): z drives red, r green and g blue, each band scaled (z x 2.2, r x 3.4, g x 6.0, in
nanomaggies) and lifted by ``m = 0.03``, then all three share one asinh stretch of their mean
intensity ``I`` (``asinh(Q I) / sqrt(Q)`` with ``Q = 20``), so colours survive the stretch. The
sky of the real Galaxy10 images sits at 32/255, what this gives for zero flux: the same formula.

A single band is given the r band's scale and replicated into all three channels (grey).
A camera does not count in nanomaggies. The scale from frame units to nanomaggies comes from
``fields.flux_scale`` if set, else from a photometric zero point in the header (``PHOTZP``,
``MAGZP`` or ``MAGZERO``: one unit is ``10 ** ((22.5 - ZP) / 2.5)`` nanomaggies), else from the
frame itself: the median over its galaxies of the scale that brings the 99th percentile of a
cut-out's weighted intensity to a typical Galaxy10 cut-out's (``fields.reference_p99``, measured
on the real sample). One scale per frame: its galaxies keep their relative brightness.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SURVEY_SCALES = (6.0, 3.4, 2.2)  # g, r, z (legacypipe dr2_rgb)
SURVEY_PEDESTAL = 0.03
SURVEY_Q = 20.0
_GREY_SCALE = 3.4  # a single band is shown like r


ZERO_POINT_KEYS = ("PHOTZP", "MAGZP", "MAGZERO")


def zero_point_scale(header: Any) -> float | None:
    """Nanomaggies per frame unit from the header's photometric zero point, if it has one."""
    if header is None:
        return None
    for key in ZERO_POINT_KEYS:
        value = header.get(key)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(10.0 ** ((22.5 - float(value)) / 2.5))
    return None


def weighted_bands(bands: np.ndarray) -> np.ndarray:
    """bands x H x W (g, r, z, or one band) to the three weighted planes in R, G, B order."""
    if bands.shape[0] == 3:
        g, r, z = bands
        return np.stack([z * SURVEY_SCALES[2], r * SURVEY_SCALES[1], g * SURVEY_SCALES[0]]).astype(
            np.float32
        )
    if bands.shape[0] == 1:
        grey = bands[0] * np.float32(_GREY_SCALE)
        return np.stack([grey, grey, grey]).astype(np.float32)
    raise ValueError(f"need 1 or 3 bands, got {bands.shape[0]}")


def auto_flux_scale(bands: np.ndarray, reference_p99: float) -> float:
    """Factor that brings the p99 of this cut-out's weighted intensity to ``reference_p99``."""
    intensity = weighted_bands(bands).mean(axis=0)
    p99 = float(np.percentile(intensity, 99)) if intensity.size else 0.0
    if not np.isfinite(p99) or p99 <= 0:
        return 1.0
    return reference_p99 / p99


def compose_rgb(bands: np.ndarray, flux_scale: float) -> np.ndarray:
    """Background-subtracted bands (bands x H x W) to uint8 H x W x 3 RGB, survey style."""
    planes = weighted_bands(bands) * np.float32(flux_scale) + np.float32(SURVEY_PEDESTAL)
    np.maximum(planes, 0.0, out=planes)
    intensity = planes.mean(axis=0)
    intensity[intensity == 0] = 1e-6
    stretch = np.arcsinh(SURVEY_Q * intensity) / np.sqrt(SURVEY_Q) / intensity
    rgb = np.clip(planes * stretch[None], 0.0, 1.0)
    return np.ascontiguousarray(np.rint(rgb.transpose(1, 2, 0) * 255.0).astype(np.uint8))


def invert_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 survey image back to g, r, z (3 x H x W) flux; exact below saturation.

    The inverse of :func:`compose_rgb` at ``flux_scale`` 1 (sky becomes ~0): how the tests and
    the benchmark paste real Galaxy10 galaxies into a linear sky.
    """
    c = rgb.astype(np.float64) / 255.0
    intensity = np.sinh(np.sqrt(SURVEY_Q) * c.mean(axis=2)) / SURVEY_Q
    intensity = np.maximum(intensity, 1e-9)
    stretch = np.arcsinh(SURVEY_Q * intensity) / np.sqrt(SURVEY_Q) / intensity
    planes = [c[:, :, p] / stretch - SURVEY_PEDESTAL for p in range(3)]  # R, G, B weighted
    z, r, g = (
        planes[0] / SURVEY_SCALES[2],
        planes[1] / SURVEY_SCALES[1],
        planes[2] / SURVEY_SCALES[0],
    )
    return np.stack([g, r, z]).astype(np.float32)
