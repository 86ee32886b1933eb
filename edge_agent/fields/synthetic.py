"""Synthetic wide fields with known truth, for the tests and ``bench/bench_fields.py``.

Real Galaxy10 cut-outs are turned back into linear g, r, z flux (the inverse of the survey's
colour composition) and pasted into a sky with a level, a gradient, Gaussian noise and stars
(Gaussian or Moffat PSF) at known positions; the frame carries a TAN WCS (0.262 arcsec/px, the
survey's, rotated) so the truth is known in pixels and on the sky. Pixels are in FITS order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_agent.fields.colour import invert_rgb

ADU_PER_FLUX = 20_000.0  # frame units per survey flux unit (nanomaggy)
PIXEL_SCALE_ARCSEC = 0.262


@dataclass
class SyntheticField:
    data: np.ndarray  # bands x H x W float64, physical units (ADU)
    header: Any  # astropy Header with the WCS
    galaxies: list[tuple[float, float]] = field(default_factory=list)  # true centres (x, y)
    stars: list[tuple[float, float]] = field(default_factory=list)


def tan_header(shape: tuple[int, int], rotation_deg: float = 20.0) -> Any:
    from astropy.io import fits

    h, w = shape
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = 150.1191, 2.2058
    header["CRPIX1"], header["CRPIX2"] = w / 2.0 + 0.5, h / 2.0 + 0.5
    header["CD1_1"], header["CD1_2"] = -scale * c, scale * s
    header["CD2_1"], header["CD2_2"] = scale * s, scale * c
    return header


def psf_stamp(
    dx: float, dy: float, fwhm: float, kind: Literal["gaussian", "moffat"], half: int
) -> np.ndarray:
    """Unit-flux PSF on a (2 half + 1)^2 grid, centred at sub-pixel offset (dx, dy)."""
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    r2 = (x - dx) ** 2 + (y - dy) ** 2
    if kind == "gaussian":
        sigma = fwhm / 2.3548
        img = np.exp(-r2 / (2 * sigma * sigma))
    else:
        beta = 3.0
        alpha = fwhm / (2.0 * math.sqrt(2 ** (1.0 / beta) - 1.0))
        img = (1.0 + r2 / (alpha * alpha)) ** (-beta)
    return img / img.sum()


def galaxy_flux(rgb: np.ndarray) -> np.ndarray:
    """A Galaxy10 RGB cut-out as g, r, z flux in FITS row order, its own sky removed."""
    bands = invert_rgb(rgb)[:, ::-1, :].astype(np.float64)
    border = np.concatenate(
        [bands[:, :16, :].reshape(3, -1), bands[:, -16:, :].reshape(3, -1)], axis=1
    )
    return bands - np.median(border, axis=1)[:, None, None]


def make_field(
    galaxies: list[np.ndarray],
    *,
    shape: tuple[int, int] = (2560, 2560),
    n_stars: int = 200,
    bands: int = 3,
    psf: Literal["gaussian", "moffat"] = "moffat",
    fwhm: float = 3.5,
    sky: float = 1000.0,
    noise: float = 40.0,
    gradient: float = 300.0,
    star_peak_range: tuple[float, float] = (40.0, 40_000.0),
    seed: int = 0,
) -> SyntheticField:
    """Galaxies on a grid (jittered), stars elsewhere; truth in FITS 0-based pixels.

    ``noise`` (ADU per band) defaults to what the pasted cut-outs carry already: the Galaxy10
    images' own sky noise, about 0.002 nanomaggy, is 40 ADU here; a quieter sky would leave
    each pasted square standing out as a field of noise peaks.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    data = np.zeros((3, h, w), dtype=np.float64)
    n = len(galaxies)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cell_w, cell_h = w / cols, h / rows
    truth_gal: list[tuple[float, float]] = []
    for k, rgb in enumerate(galaxies):
        flux = galaxy_flux(rgb) * ADU_PER_FLUX
        sh, sw = flux.shape[1:]
        cx = (k % cols + 0.5) * cell_w + rng.uniform(-0.15, 0.15) * cell_w
        cy = (k // cols + 0.5) * cell_h + rng.uniform(-0.15, 0.15) * cell_h
        x0 = int(np.clip(round(cx - sw / 2), 0, w - sw))
        y0 = int(np.clip(round(cy - sh / 2), 0, h - sh))
        data[:, y0 : y0 + sh, x0 : x0 + sw] += flux
        truth_gal.append((x0 + (sw - 1) / 2.0, y0 + (sh - 1) / 2.0))
    truth_star: list[tuple[float, float]] = []
    lo, hi = math.log(star_peak_range[0]), math.log(star_peak_range[1])
    tries = 0
    while len(truth_star) < n_stars and tries < n_stars * 50:
        tries += 1
        x, y = rng.uniform(20, w - 21), rng.uniform(20, h - 21)
        if any(abs(x - gx) < 150 and abs(y - gy) < 150 for gx, gy in truth_gal):
            continue
        if any((x - sx) ** 2 + (y - sy) ** 2 < 30**2 for sx, sy in truth_star):
            continue
        peak = math.exp(rng.uniform(lo, hi))
        half = 12 if peak < 2000 else 30
        ix, iy = round(x), round(y)
        if ix - half < 0 or iy - half < 0 or ix + half >= w or iy + half >= h:
            continue
        stamp = psf_stamp(x - ix, y - iy, fwhm, psf, half)
        stamp = stamp / stamp.max() * peak
        colour = rng.uniform(0.6, 1.4, size=3)
        for b in range(3):
            data[b, iy - half : iy + half + 1, ix - half : ix + half + 1] += stamp * colour[b]
        truth_star.append((x, y))
    yy, xx = np.mgrid[0:h, 0:w]
    background = sky + gradient * (0.6 * xx / w + 0.4 * yy / h)
    data += background[None]
    data += rng.normal(0.0, noise, size=data.shape)
    if bands == 1:
        data = data[1:2]
    return SyntheticField(data, tan_header(shape), truth_gal, truth_star)


def write_fits(
    field_: SyntheticField,
    path: Path,
    kind: Literal["uint16", "float32", "int16_scaled"] = "float32",
    header_extra: dict[str, Any] | None = None,
    with_wcs: bool = True,
) -> Path:
    """One FITS file: uint16 (BZERO 32768), float32, or int16 with BSCALE 2 / BZERO 20000."""
    from astropy.io import fits

    data = field_.data[0] if field_.data.shape[0] == 1 else field_.data
    header = field_.header.copy() if with_wcs else fits.Header()
    for key, value in (header_extra or {}).items():
        header[key] = value
    if kind == "uint16":
        hdu = fits.PrimaryHDU(np.clip(np.rint(data), 0, 65535).astype(np.uint16), header=header)
    elif kind == "float32":
        hdu = fits.PrimaryHDU(data.astype(np.float32), header=header)
    else:
        hdu = fits.PrimaryHDU(data.astype(np.float32), header=header)
        hdu.scale("int16", bscale=2.0, bzero=20_000.0)
    hdu.writeto(path, overwrite=True)
    return Path(path)


def model_galaxy(
    r_e: float = 12.0, axis_ratio: float = 0.6, angle_deg: float = 30.0, flux: float = 60.0
) -> np.ndarray:
    """A smooth exponential-disc galaxy as a survey-style 256 x 256 RGB image (no real data).

    For tests that must run without the Galaxy10 sample; ``flux`` in nanomaggies.
    """
    from edge_agent.fields.colour import compose_rgb

    y, x = np.mgrid[0:256, 0:256].astype(np.float64) - 127.5
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    u, v = x * c + y * s, (-x * s + y * c) / axis_ratio
    disc = np.exp(-1.678 * np.hypot(u, v) / r_e)
    disc *= flux / disc.sum()
    bands = np.stack([disc * 0.6, disc, disc * 1.3]).astype(np.float32)  # g, r, z: reddish
    return compose_rgb(bands, 1.0)
