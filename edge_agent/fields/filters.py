"""Which detections are galaxies: stars, saturated sources, artefacts and edge sources go.

Every source gets one reason, the first rule that matches, in this order:

``edge``       its pixels touch the frame's border (it cannot be framed whole)
``saturated``  one of its pixels reaches the saturation level (its light profile is clipped)
``artefact``   sharper than the PSF (cosmic ray, hot pixel) or a line (b/a under
               ``min_axis_ratio``: satellite trail, bad column)
``star``       its half-light radius is under ``star_r50_factor`` times the PSF's
``faint``      its signal-to-noise ratio is under ``min_snr`` (noise, or too faint to classify)
``kept``       a galaxy

The PSF's half-light radius is measured on the frame: the 25th percentile of the radii of bright
(``psf_min_snr``), unsaturated, untruncated sources, which are mostly stars on any sky away from a
cluster's core; too few of them and ``psf_fallback_r50_px`` is used (said in the summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_agent.fields.detect import Detections
from edge_agent.fields.settings import FieldsConfig

REASONS = ("edge", "saturated", "artefact", "star", "faint")
_MIN_PSF_STARS = 5


@dataclass
class FilterResult:
    reason: np.ndarray  # per source: "" (kept) or one of REASONS
    psf_r50: float
    psf_source: str  # "measured", "configured" or "fallback"
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        return np.flatnonzero(self.reason == "")


def _touches_edge(cat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return (cat["xmin"] <= 0) | (cat["ymin"] <= 0) | (cat["xmax"] >= w - 1) | (cat["ymax"] >= h - 1)


def _saturated(
    det: Detections, raw: np.ndarray, levels: list[float | None], margin: float
) -> np.ndarray:
    """Sources owning a pixel at or above its band's saturation level (x ``margin``)."""
    n = len(det.catalog)
    hit = np.zeros(n, dtype=bool)
    for band, level in enumerate(levels):
        if level is None:
            continue
        with np.errstate(invalid="ignore"):
            sat = raw[band] >= level * margin
        if not sat.any():
            continue
        owners = np.unique(det.segmap[sat])
        owners = owners[(owners > 0) & (owners <= n)]
        hit[owners - 1] = True
    return hit


def snr(det: Detections) -> np.ndarray:
    """Isophotal signal-to-noise ratio of each source (sky noise only)."""
    noise = det.rms * np.sqrt(np.maximum(det.catalog["npix"], 1))
    return np.asarray(det.catalog["flux"] / np.maximum(noise, 1e-30), dtype=float)


def measure_psf(det: Detections, unusable: np.ndarray, settings: FieldsConfig) -> tuple[float, str]:
    if settings.psf_r50_px is not None:
        return settings.psf_r50_px, "configured"
    bright = (snr(det) >= settings.psf_min_snr) & ~unusable & (det.r50 > 0)
    if bright.sum() < _MIN_PSF_STARS:
        return settings.psf_fallback_r50_px, "fallback"
    return float(np.percentile(det.r50[bright], 25)), "measured"


def apply_filters(
    det: Detections,
    raw: np.ndarray,
    saturation: list[float | None],
    settings: FieldsConfig,
) -> FilterResult:
    """One reason per source (``""`` for a kept galaxy), and the PSF size used."""
    cat = det.catalog
    n = len(cat)
    reason = np.full(n, "", dtype=object)
    if n == 0:
        return FilterResult(reason, settings.psf_r50_px or 0.0, "none", dict.fromkeys(REASONS, 0))
    shape = (int(det.segmap.shape[0]), int(det.segmap.shape[1]))
    edge = _touches_edge(cat, shape) if settings.reject_edge else np.zeros(n, dtype=bool)
    levels: list[float | None] = (
        [settings.saturation] * len(saturation) if settings.saturation else list(saturation)
    )
    saturated = _saturated(det, raw, levels, 0.999)
    psf, psf_source = measure_psf(det, edge | saturated, settings)
    with np.errstate(divide="ignore", invalid="ignore"):
        axis_ratio = np.where(cat["a"] > 0, cat["b"] / cat["a"], 0.0)
    artefact = (det.r50 < settings.sharp_r50_factor * psf) | (axis_ratio < settings.min_axis_ratio)
    star = det.r50 < settings.star_r50_factor * psf
    faint = snr(det) < settings.min_snr
    for name, hit in (
        ("faint", faint),
        ("star", star),
        ("artefact", artefact),
        ("saturated", saturated),
        ("edge", edge),
    ):
        reason[hit] = name  # reverse order: the first rule of the docstring wins
    counts = {name: int((reason == name).sum()) for name in REASONS}
    return FilterResult(reason, psf, psf_source, counts)
