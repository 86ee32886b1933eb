"""Pixel to sky: from the frame's WCS (astropy), approximately from its pointing, or not at all.

Acquisition software that has not plate-solved writes the mount's pointing (``OBJCTRA`` /
``OBJCTDEC``, or ``RA`` / ``DEC`` in degrees), the focal length (``FOCALLEN``, mm) and the pixel
size (``XPIXSZ``, or ``PIXSIZE1`` times ``XBINNING``, micrometres). From those a TAN projection
centred on the frame, north up and east left, gives positions good to the mount's pointing error
and the camera's unknown rotation: those are marked ``approximate``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

SkyKind = Literal["wcs", "approximate", "none"]
_ARCSEC_PER_RADIAN = 206_264.806


@dataclass
class SkyMapper:
    """Turns 0-based pixel positions (FITS order) into right ascension and declination (deg)."""

    kind: SkyKind
    wcs: Any = None  # astropy.wcs.WCS (celestial part)
    note: str = ""

    def to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.wcs is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
        return np.asarray(ra, dtype=float) % 360.0, np.asarray(dec, dtype=float)


def _sexagesimal(text: str, hours: bool) -> float | None:
    parts = text.replace(":", " ").replace("h", " ").replace("d", " ").split()
    try:
        values = [float(p.rstrip("ms'\"")) for p in parts]
    except ValueError:
        return None
    if not values or len(values) > 3:
        return None
    sign = -1.0 if text.strip().startswith("-") else 1.0
    deg = abs(values[0]) + sum(v / 60.0**i for i, v in enumerate(values[1:], start=1))
    deg *= sign
    return deg * 15.0 if hours else deg


def _pointing(header: Any) -> tuple[float, float] | None:
    ra_text, dec_text = header.get("OBJCTRA"), header.get("OBJCTDEC")
    if isinstance(ra_text, str) and isinstance(dec_text, str):
        ra, dec = _sexagesimal(ra_text, True), _sexagesimal(dec_text, False)
        if ra is not None and dec is not None:
            return ra, dec
    ra_deg, dec_deg = header.get("RA"), header.get("DEC")
    if isinstance(ra_deg, (int, float)) and isinstance(dec_deg, (int, float)):
        return float(ra_deg), float(dec_deg)
    return None


def plate_scale_arcsec(header: Any) -> float | None:
    """Arcseconds per pixel from FOCALLEN (mm) and the pixel size (um).

    ``XPIXSZ`` is the binned pixel size (MaxIm DL's convention, also written by INDI);
    ``PIXSIZE1`` the unbinned one, multiplied by ``XBINNING``.
    """
    focal = header.get("FOCALLEN")
    binned = header.get("XPIXSZ")
    unbinned = header.get("PIXSIZE1")
    binning = header.get("XBINNING", 1)
    if isinstance(binned, (int, float)) and binned > 0:
        pix_um = float(binned)
    elif isinstance(unbinned, (int, float)) and isinstance(binning, (int, float)):
        pix_um = float(unbinned) * float(binning)
    else:
        return None
    if not isinstance(focal, (int, float)) or focal <= 0 or pix_um <= 0:
        return None
    return _ARCSEC_PER_RADIAN * pix_um * 1e-3 / float(focal)


def _approximate(header: Any, shape: tuple[int, int]) -> SkyMapper | None:
    from astropy.wcs import WCS

    pointing = _pointing(header)
    scale = plate_scale_arcsec(header)
    if pointing is None or scale is None:
        return None
    h, w = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [pointing[0] % 360.0, pointing[1]]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]  # FITS 1-based centre
    wcs.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    return SkyMapper(
        "approximate",
        wcs,
        f"from pointing {pointing[0]:.4f},{pointing[1]:.4f} and {scale:.3f} arcsec/px, "
        "rotation unknown",
    )


_NUMERIC_WCS_KEYS = (
    "CRVAL1",
    "CRVAL2",
    "CRPIX1",
    "CRPIX2",
    "CDELT1",
    "CDELT2",
    "CD1_1",
    "CD1_2",
    "CD2_1",
    "CD2_2",
    "PC1_1",
    "PC1_2",
    "PC2_1",
    "PC2_2",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sky_mapper(header: Any, shape: tuple[int, int]) -> tuple[SkyMapper, str | None]:
    """The best mapping the header allows, and a problem to report (a broken WCS) or None."""
    from astropy.wcs import WCS

    problem = None
    if header is not None and "CTYPE1" in header:
        bad = [k for k in _NUMERIC_WCS_KEYS if k in header and not _is_number(header[k])]
        if bad:
            problem = f"the header's WCS has non-numeric {', '.join(bad)}"
    if header is not None and "CTYPE1" in header and problem is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = WCS(header, naxis=2)
            if wcs.has_celestial:
                celestial = wcs.celestial
                probe = celestial.pixel_to_world_values(shape[1] / 2.0, shape[0] / 2.0)
                if all(math.isfinite(float(v)) for v in probe):
                    return SkyMapper("wcs", celestial, "from the frame's WCS"), None
            problem = "the header's WCS is not celestial or gives no finite position"
        except Exception as exc:  # astropy raises many types for broken WCS keywords
            problem = f"the header's WCS cannot be used ({type(exc).__name__}: {exc})"
    if header is not None:
        approx = _approximate(header, shape)
        if approx is not None:
            return approx, problem
    return SkyMapper("none", None, "no WCS and no pointing in the header"), problem
