"""FITS to float pixels and header, for wide fields (the contract decoder gives 8-bit RGB instead).

Source extraction needs the data as measured: linear, with its header (WCS, pointing, saturation).
Sizes are checked from the header before a byte of data is read: NAXISn against
``decode.max_pixels``, the file's length against what NAXISn promises (else ``truncated``), so a
20,000 x 20,000 header costs nothing. BZERO/BSCALE are applied by astropy; uint16, int16/32 and
float32/64 data all become float32; NaNs are kept (the detector masks them).

Pixels stay in FITS order (row 0 is the bottom row): the WCS and the reported pixel positions use
that order, 0-based like astropy's ``pixel_to_world``.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contract.decode import DecodeError
from edge_agent.contract.decode_config import DecodeConfig

_FITS_MAGIC = b"SIMPLE  ="
_BLOCK = 2880


@dataclass
class RawFrame:
    """One exposure: ``data`` is bands x H x W float32 (1 or 3 bands, survey order g, r, z)."""

    data: np.ndarray
    header: Any  # astropy.io.fits.Header of the HDU (of the first file for three files)
    saturation: list[float | None]  # per band, in the data's physical units
    source_dtype: str
    notes: list[str] = field(default_factory=list)

    @property
    def bands(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])


def _integer_top(header: Any) -> float | None:
    bitpix = int(header.get("BITPIX", -32))
    if bitpix <= 0:
        return None
    bscale = float(header.get("BSCALE", 1.0))
    bzero = float(header.get("BZERO", 0.0))
    raw_top = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
    return raw_top * bscale + bzero


def saturation_level(header: Any) -> float | None:
    """SATURATE or DATAMAX if the header has one, else the top of an integer type, else None."""
    for key in ("SATURATE", "DATAMAX"):
        value = header.get(key)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value)
    return _integer_top(header)


def _check_header(
    header: Any, name: str, file_size: int, offset: int | None, config: DecodeConfig
) -> tuple[int, ...]:
    """The image's shape (NumPy order) after the size checks; ``offset`` None: compressed."""
    naxis = int(header.get("NAXIS", 0))
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if naxis == 0 or any(d <= 0 for d in dims):
        return ()
    if naxis > 3:
        raise DecodeError("unsupported", f"{name}: FITS image of {naxis} axes (need 2 or 3)")
    pixels = dims[0] * dims[1]
    if pixels > config.max_pixels:
        raise DecodeError(
            "oversized",
            f"{name}: {dims[0]}x{dims[1]} pixels, above decode.max_pixels={config.max_pixels}",
        )
    planes = dims[2] if naxis == 3 else 1
    if planes > 3 and config.fits.bands is None:
        raise DecodeError(
            "unsupported",
            f"{name}: FITS cube of {planes} planes; set decode.fits.bands to 1 or 3 of them",
        )
    nbytes = pixels * planes * abs(int(header.get("BITPIX", 8))) // 8
    if offset is not None and offset + nbytes > file_size:
        raise DecodeError(
            "truncated",
            f"{name}: header promises {nbytes} bytes of data, the file holds "
            f"{max(0, file_size - offset)}",
        )
    return tuple(reversed(dims))


def _open_checked(
    source: Path | bytes, name: str, config: DecodeConfig
) -> tuple[np.ndarray, Any, list[Any]]:
    """The chosen image HDU's data (as stored, 2-D or 3-D), its header and the band headers,
    sizes checked first.

    ``source`` is a file (only the chosen HDU's pixels are read) or the bytes of one. A file of
    exactly three 2-D image HDUs of one size (one per band, as some pipelines write g, r, z) is
    read as three planes, ordered by their FILTER/BAND cards when those name g, r and z, else in
    file order; the band headers then are the three HDUs' (the first's WCS is the frame's).
    """
    from astropy.io import fits  # lazy: astropy takes a second to import

    if isinstance(source, bytes):
        size, head = len(source), source[: len(_FITS_MAGIC)]
        opened: Any = io.BytesIO(source)
    else:
        size = source.stat().st_size
        with source.open("rb") as fh:
            head = fh.read(len(_FITS_MAGIC))
        opened = source
    if size == 0:
        raise DecodeError("truncated", f"{name}: empty input (0 bytes)")
    if not head.startswith(_FITS_MAGIC):
        raise DecodeError("wrong_type", f"{name}: not a FITS file (no SIMPLE card)")
    if size % _BLOCK != 0:
        raise DecodeError("truncated", f"{name}: {size} bytes, not a multiple of 2880")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns on odd cards; the checks below decide
            # No memory map: astropy cannot map scaled (BZERO/BSCALE) data; the sizes are
            # checked before the data is touched.
            with fits.open(opened, memmap=False, lazy_load_hdus=True) as hdus:
                bands = _band_hdus(hdus, name, size, config)
                if bands is not None:
                    band_headers = [h for _, h in bands]
                    data = np.stack([np.array(b.data, dtype=np.float32) for b, _ in bands])
                    header = band_headers[0]
                else:
                    hdu, header = _choose_hdu(hdus, name, size, config)
                    band_headers = [header]
                    # applies BZERO/BSCALE
                    data = np.array(hdu.data, dtype=np.float32)
    except DecodeError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise DecodeError(
            "corrupt", f"{name}: FITS unreadable ({type(exc).__name__}: {exc})"
        ) from exc
    return data, header, band_headers


_BAND_NAMES = ("g", "r", "z")


def _band_name(header: Any) -> str | None:
    for key in ("FILTER", "BAND", "FILTNAM"):
        value = str(header.get(key, "")).strip().lower()
        if value[:1] in _BAND_NAMES and (len(value) == 1 or not value[1].isalpha()):
            return value[:1]
    return None


def _band_hdus(hdus: Any, name: str, size: int, config: DecodeConfig) -> list[Any] | None:
    """The (hdu, header) of each band when the file holds three 2-D image HDUs of one size."""
    from astropy.io import fits

    if config.fits.hdu is not None:
        return None
    found: list[tuple[Any, Any, tuple[int, ...]]] = []
    for index, hdu in enumerate(hdus):
        compressed = isinstance(hdu, fits.CompImageHDU)
        offset = None if compressed else int(hdus.fileinfo(index)["datLoc"])
        dims = _check_header(hdu.header, name, size, offset, config)
        if dims and getattr(hdu, "is_image", True):
            found.append((hdu, hdu.header.copy(), tuple(dims)))
    if len(found) != 3 or any(len(d) != 2 or d != found[0][2] for _, _, d in found):
        return None
    named = [_band_name(h) for _, h, _ in found]
    if sorted(n for n in named if n) == sorted(_BAND_NAMES):
        found = [found[named.index(band)] for band in _BAND_NAMES]
    return [(hdu, header) for hdu, header, _ in found]


def _choose_hdu(hdus: Any, name: str, size: int, config: DecodeConfig) -> tuple[Any, Any]:
    from astropy.io import fits

    index = 0
    while True:
        try:
            hdu = hdus[index]
        except IndexError:
            break
        if config.fits.hdu is None or index == config.fits.hdu:
            header = hdu.header
            # A tile-compressed HDU (.fits.fz) holds fewer bytes than its image: astropy checks
            # its tiles while decompressing (a short one is corrupt).
            compressed = isinstance(hdu, fits.CompImageHDU)
            offset = None if compressed else int(hdus.fileinfo(index)["datLoc"])
            dims = _check_header(header, name, size, offset, config)
            if dims and getattr(hdu, "is_image", True):
                # a copy now: astropy drops BZERO/BSCALE from the header once it scales the data
                return hdu, header.copy()
            if config.fits.hdu is not None:
                break
        index += 1
    raise DecodeError("unsupported", f"{name}: FITS without an image HDU")


def _select_planes(
    data: np.ndarray, config: DecodeConfig, band_order: str, name: str
) -> np.ndarray:
    if data.ndim == 2:
        return data[None]
    planes = data.shape[0]
    if config.fits.bands is not None:
        if max(config.fits.bands) >= planes:
            raise DecodeError(
                "unsupported", f"{name}: decode.fits.bands outside the cube's {planes} planes"
            )
        data = data[config.fits.bands]
    elif planes not in (1, 3):
        raise DecodeError("unsupported", f"{name}: FITS cube of {planes} planes (need 1 or 3)")
    if data.shape[0] == 3 and band_order == "zrg":
        data = data[::-1]
    return data


def read_fits(
    source: Path | bytes, config: DecodeConfig, band_order: str = "grz", name: str | None = None
) -> RawFrame:
    """One FITS file or its bytes (one band, one HDU of three planes, or three band HDUs) as a
    :class:`RawFrame`."""
    name = name or (Path(source).name if not isinstance(source, bytes) else "frame")
    data, header, band_headers = _open_checked(
        Path(source) if not isinstance(source, bytes) else source, name, config
    )
    if len(band_headers) == 3 and [_band_name(h) for h in band_headers] == list(_BAND_NAMES):
        band_order = "grz"  # three HDUs named by their FILTER cards: already in g, r, z order
    data = _select_planes(data, config, band_order, name)
    if len(band_headers) == data.shape[0]:
        saturation = [saturation_level(h) for h in band_headers]
    else:
        saturation = [saturation_level(header)] * data.shape[0]
    return RawFrame(
        data=np.ascontiguousarray(data, dtype=np.float32),
        header=header,
        saturation=saturation,
        source_dtype=f"BITPIX={header.get('BITPIX')}",
    )


def read_fits_bands(
    sources: Sequence[Path | bytes], config: DecodeConfig, names: Sequence[str] | None = None
) -> RawFrame:
    """Three single-band files (or their bytes) of one exposure, in g, r, z order.

    The header (WCS, pointing) is the first band's; each band keeps its own saturation level.
    """
    if len(sources) != 3:
        raise DecodeError("unsupported", f"three band files needed (g, r, z), got {len(sources)}")
    labels = (
        list(names)
        if names is not None
        else [
            Path(s).name if not isinstance(s, bytes) else f"band {i}" for i, s in enumerate(sources)
        ]
    )
    planes: list[np.ndarray] = []
    headers: list[Any] = []
    for source, name in zip(sources, labels, strict=True):
        data, header, _ = _open_checked(source, name, config)
        if data.ndim != 2:
            raise DecodeError("unsupported", f"{name}: a band file must hold one 2-D image")
        if planes and data.shape != planes[0].shape:
            raise DecodeError(
                "unsupported", f"{name}: {data.shape} pixels, the first band has {planes[0].shape}"
            )
        planes.append(data)
        headers.append(header)
    return RawFrame(
        data=np.stack(planes),
        header=headers[0],
        saturation=[saturation_level(h) for h in headers],
        source_dtype=",".join(f"BITPIX={h.get('BITPIX')}" for h in headers),
    )
