"""One wide field to galaxy cut-outs and a summary: detect, filter, frame, place on the sky.

:func:`process_field` never raises for what is wrong inside a readable frame: it processes as
far as it can and lists each problem (``reason``, ``detail``) for the ``errors`` topic, e.g.
``too_many_sources``, ``bad_wcs``, ``nan_pixels``. A frame with no galaxies gives an empty list
of cut-outs and a summary that says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.fields.colour import zero_point_scale
from edge_agent.fields.cutout import cutout_image, cutout_side, stamp_flux_scale
from edge_agent.fields.detect import FieldError, detect, nucleus_positions
from edge_agent.fields.filters import REASONS, apply_filters
from edge_agent.fields.raw import RawFrame
from edge_agent.fields.settings import FieldsConfig
from edge_agent.fields.sky import sky_mapper


@dataclass
class Cutout:
    """One kept galaxy: where it is and the image the model sees."""

    index: int  # the source's index in the frame's catalogue (detection order)
    x: float  # 0-based pixel position, FITS order (astropy's pixel_to_world convention)
    y: float
    side: int  # side of the framed square, in frame pixels
    r50: float  # half-light radius, frame pixels
    flux: float
    ra: float | None
    dec: float | None
    sky: str  # "wcs", "approximate" or "none"
    image: np.ndarray  # uint8 S x S x 3 RGB

    def position(self) -> dict[str, Any]:
        """The cut-out's place, as it goes into a classification payload."""
        return {
            "index": self.index,
            "x": round(self.x, 2),
            "y": round(self.y, 2),
            "size_px": self.side,
            "r50_px": round(self.r50, 3),
            "ra": None if self.ra is None else round(self.ra, 7),
            "dec": None if self.dec is None else round(self.dec, 7),
            "sky": self.sky,
            "approximate": self.sky == "approximate",
        }


@dataclass
class FieldOutcome:
    cutouts: list[Cutout]
    summary: dict[str, Any]
    problems: list[tuple[str, str]] = field(default_factory=list)


def _empty_summary(raw: RawFrame) -> dict[str, Any]:
    h, w = raw.shape
    return {
        "width": w,
        "height": h,
        "bands": raw.bands,
        "sources_found": 0,
        "galaxies_kept": 0,
        "galaxies_classified": 0,
        "rejected": {**dict.fromkeys(REASONS, 0), "limit": 0},
        "psf_r50_px": None,
        "psf_source": "none",
        "background_rms": None,
        "nan_pixels": 0,
        "sky": "none",
        "flux_scale": None,
        "flux_scale_source": "none",
        "timings_ms": {},
    }


def _flux_scale(
    raw: RawFrame,
    bands: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    sides: list[int],
    fluxes: np.ndarray,
    settings: FieldsConfig,
) -> tuple[float | None, str]:
    """Frame units to nanomaggies: configured, from the zero point, or from the galaxies."""
    if settings.flux_scale is not None:
        return settings.flux_scale, "configured"
    from_header = zero_point_scale(raw.header)
    if from_header is not None:
        return from_header, "zero_point"
    if not sides:
        return None, "none"
    # The reference was measured on Galaxy10's galaxies, which are bright: compare it with the
    # frame's brightest quarter, not with the faint galaxies a deep frame holds in numbers.
    brightest = np.argsort(-fluxes, kind="stable")[: max(1, len(sides) // 4)]
    scales = [
        stamp_flux_scale(bands, float(xs[k]), float(ys[k]), sides[k], settings) for k in brightest
    ]
    return float(np.median(scales)), "galaxies"


def process_field(raw: RawFrame, settings: FieldsConfig, input_size: int) -> FieldOutcome:
    """Detect, filter and cut out the galaxies of ``raw``; problems are listed, not raised."""
    summary = _empty_summary(raw)
    problems: list[tuple[str, str]] = []
    timings: dict[str, float] = summary["timings_ms"]
    mapper, wcs_problem = sky_mapper(raw.header, raw.shape)
    summary["sky"] = mapper.kind
    if wcs_problem:
        problems.append(("bad_wcs", wcs_problem))
    elif mapper.kind == "none":
        problems.append(("no_wcs", "no WCS and no pointing in the header: no sky positions"))
    t0 = time.perf_counter()
    try:
        det = detect(raw.data, settings)
    except FieldError as exc:
        problems.append((exc.reason, str(exc)))
        timings["detect"] = (time.perf_counter() - t0) * 1e3
        return FieldOutcome([], summary, problems)
    t1 = time.perf_counter()
    timings["detect"] = (t1 - t0) * 1e3
    summary["nan_pixels"] = det.nan_pixels
    summary["background_rms"] = float(det.rms)
    if det.nan_pixels:
        problems.append(
            ("nan_pixels", f"{det.nan_pixels} NaN or infinite pixels masked (treated as no data)")
        )
    summary["sources_found"] = len(det)
    filt = apply_filters(det, raw.data, raw.saturation, settings)
    summary["psf_r50_px"] = round(float(filt.psf_r50), 3)
    summary["psf_source"] = filt.psf_source
    kept = filt.kept
    summary["galaxies_kept"] = len(kept)
    summary["rejected"] = {**filt.counts, "limit": 0}
    t2 = time.perf_counter()
    timings["filter"] = (t2 - t1) * 1e3
    if len(kept) > settings.max_cutouts:
        order = np.argsort(-det.catalog["flux"][kept], kind="stable")
        dropped = len(kept) - settings.max_cutouts
        kept = np.sort(kept[order[: settings.max_cutouts]])
        summary["rejected"]["limit"] = dropped
        problems.append(
            (
                "too_many_sources",
                f"{dropped} of {dropped + len(kept)} galaxies not classified "
                f"(fields.max_cutouts={settings.max_cutouts}; the brightest were kept)",
            )
        )
    cat = det.catalog
    # A window of 1.5 PSF half-light radii lands within 1.6 px of the centre of 25 of 25 real
    # Galaxy10 galaxies on a synthetic sky (the barycentre: 20 of 25 within 3 px).
    xs, ys = nucleus_positions(det.image, cat[kept], 1.5 * filt.psf_r50)
    world = mapper.to_world(xs, ys) if len(kept) else None
    sides = [cutout_side(float(det.r50[i]), settings) for i in kept]
    scale, scale_source = _flux_scale(
        raw, det.subtracted, xs, ys, sides, cat["flux"][kept], settings
    )
    summary["flux_scale"] = scale
    summary["flux_scale_source"] = scale_source
    cutouts = []
    for j, i in enumerate(kept):
        side = sides[j]
        ra = dec = None
        if world is not None and np.isfinite(world[0][j]) and np.isfinite(world[1][j]):
            ra, dec = float(world[0][j]), float(world[1][j])
        image = cutout_image(
            det.subtracted, float(xs[j]), float(ys[j]), side, scale or 1.0, input_size
        )
        cutouts.append(
            Cutout(
                index=int(i),
                x=float(xs[j]),
                y=float(ys[j]),
                side=side,
                r50=float(det.r50[i]),
                flux=float(cat["flux"][i]),
                ra=ra,
                dec=dec,
                sky=mapper.kind if ra is not None else "none",
                image=image,
            )
        )
    summary["galaxies_classified"] = len(cutouts)
    timings["cutout"] = (time.perf_counter() - t2) * 1e3
    return FieldOutcome(cutouts, summary, problems)
