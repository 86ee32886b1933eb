"""Background and source extraction with ``sep`` (Source Extractor's algorithms as a library).

Each band's background is estimated on a mesh (``background_box_px``) and subtracted; sources
are extracted on the mean of the subtracted bands, with NaN pixels masked. Every source gets a
half-light radius (``flux_radius`` at 0.5 within six times its semi-major axis), the size the
filters and the framing use. sep's pixel buffer is grown on demand up to ``max_pixstack``: a
crowded frame costs memory in proportion, never without bound.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import sep

from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.fields.settings import FieldsConfig

# sep's buffer sizes are process-wide settings: one extraction at a time changes them.
_SEP_LOCK = threading.Lock()


class FieldError(GalaxyEdgeError):
    """A wide field that cannot be processed further; ``reason`` goes to the ``errors`` topic."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass
class Detections:
    """The extracted catalogue and what the filters need besides it."""

    catalog: np.ndarray  # sep's structured array: x, y, a, b, theta, flux, npix, peak, flag, ...
    r50: np.ndarray  # half-light radius of each source (px)
    segmap: np.ndarray  # int32 H x W: 1 + index of the source owning a pixel, 0 for sky
    subtracted: np.ndarray  # bands x H x W float32, background subtracted, NaNs set to 0
    image: np.ndarray  # H x W float32 detection image (mean of the subtracted bands)
    rms: float  # global background RMS of the detection image
    nan_pixels: int

    def __len__(self) -> int:
        return len(self.catalog)


def _background(band: np.ndarray, mask: np.ndarray | None, box: int) -> sep.Background:
    h, w = band.shape
    bw, bh = min(box, w), min(box, h)
    return sep.Background(band, mask=mask, bw=bw, bh=bh, fw=3, fh=3)


def _extract(
    image: np.ndarray, mask: np.ndarray | None, rms: float, settings: FieldsConfig
) -> tuple[np.ndarray, np.ndarray]:
    pixstack = max(300_000, sep.get_extract_pixstack())
    while True:
        sep.set_extract_pixstack(pixstack)
        try:
            return sep.extract(
                image,
                settings.detect_sigma,
                err=rms,
                mask=mask,
                minarea=settings.min_area_px,
                deblend_cont=settings.deblend_contrast,
                segmentation_map=True,
            )
        except Exception as exc:  # sep raises plain Exception with Source Extractor's message
            text = str(exc)
            if "pixel buffer full" in text and pixstack < settings.max_pixstack:
                pixstack = min(settings.max_pixstack, pixstack * 4)
                continue
            if "pixel buffer full" in text or "object" in text:
                raise FieldError(
                    "too_many_sources",
                    f"source extraction gave up: {text} (pixel buffer {pixstack}; raise "
                    "fields.max_pixstack or fields.detect_sigma)",
                ) from exc
            raise FieldError("detection_failed", f"source extraction failed: {text}") from exc


def detect(data: np.ndarray, settings: FieldsConfig) -> Detections:
    """Subtract each band's background and extract the sources of ``data`` (bands x H x W).

    Memory: besides ``data``, one subtracted copy, the detection image, the segmentation map and
    one band's background at a time (about 4 x a band plus 1 x the frame).
    """
    bad = ~np.isfinite(data).all(axis=0)
    nan_pixels = int(bad.sum())
    if nan_pixels == bad.size:
        raise FieldError("no_data", "every pixel of the frame is NaN or infinite")
    mask = bad if nan_pixels else None
    subtracted = np.empty(data.shape, dtype=np.float32)
    with _SEP_LOCK:
        for i in range(data.shape[0]):
            band = np.ascontiguousarray(data[i], dtype=np.float32)
            if mask is not None:
                band = np.where(mask | ~np.isfinite(band), np.float32(0.0), band)
            bkg = _background(band, mask, settings.background_box_px)
            np.subtract(band, bkg.back(), out=subtracted[i])
            del band, bkg
            if mask is not None:
                subtracted[i][mask] = 0.0
        det = subtracted.mean(axis=0) if data.shape[0] > 1 else subtracted[0]
        det = np.ascontiguousarray(det, dtype=np.float32)
        sky = det[~bad] if mask is not None else det
        rms = _robust_rms(sky)
        if not np.isfinite(rms) or rms <= 0:  # a constant frame: no noise, nothing to detect
            empty = np.zeros(0, dtype=sep.extract(np.zeros((8, 8), np.float32), 1.0).dtype)
            segmap = np.zeros(det.shape, np.int32)
            return Detections(empty, np.zeros(0), segmap, subtracted, det, 0.0, nan_pixels)
        catalog, segmap = _extract(det, mask, rms, settings)
        if len(catalog) > settings.max_sources:
            raise FieldError(
                "too_many_sources",
                f"{len(catalog)} sources detected, above fields.max_sources={settings.max_sources}",
            )
        r50 = half_light_radius(det, catalog, segmap)
    return Detections(catalog, r50, segmap, subtracted, det, rms, nan_pixels)


def _robust_rms(values: np.ndarray) -> float:
    """RMS of the sky from the median absolute deviation (sources barely move it)."""
    flat = values.ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000]
    med = float(np.median(flat))
    return 1.4826 * float(np.median(np.abs(flat - med)))


def nucleus_positions(
    image: np.ndarray, catalog: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Windowed centroids (Source Extractor's XWIN) started at each source's filtered peak.

    With a window of the PSF's size this converges on the nucleus, the position a catalogue (and
    a Galaxy10 cut-out) is centred on; the isophotal barycentre of a disturbed or lopsided galaxy
    can lie several pixels away from it.
    """
    if len(catalog) == 0:
        return np.zeros(0), np.zeros(0)
    x0 = catalog["xcpeak"].astype(float)
    y0 = catalog["ycpeak"].astype(float)
    x, y, _flag = sep.winpos(image, x0, y0, np.full(len(catalog), max(sigma, 0.5)))
    x, y = np.asarray(x, float), np.asarray(y, float)
    bad = ~np.isfinite(x) | ~np.isfinite(y) | (np.hypot(x - x0, y - y0) > 3.0 * max(sigma, 1.0))
    x[bad], y[bad] = x0[bad], y0[bad]
    return x, y


def half_light_radius(
    image: np.ndarray, catalog: np.ndarray, segmap: np.ndarray | None = None
) -> np.ndarray:
    """Each source's radius enclosing half its flux within 6 x its semi-major axis (px).

    With the segmentation map, the pixels of other sources are masked: a neighbour inside the
    aperture would otherwise inflate the radius, and with it the framing.
    """
    if len(catalog) == 0:
        return np.zeros(0)
    radius = np.maximum(6.0 * catalog["a"], 3.0)
    extra = {}
    if segmap is not None:
        extra = {"segmap": segmap, "seg_id": np.arange(1, len(catalog) + 1, dtype=np.int32)}
    r50, _flag = sep.flux_radius(
        image, catalog["x"], catalog["y"], radius, 0.5, normflux=None, subpix=5, **extra
    )
    r50 = np.asarray(r50, dtype=float)
    r50[~np.isfinite(r50) | (r50 <= 0)] = 0.0
    return r50
