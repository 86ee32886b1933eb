"""Encoded image bytes (PNG, JPEG, TIFF, BMP, WebP, NPY, FITS) to the uint8 H x W x 3 RGB frames the model sees.

Every stage reads pixels through this module: the agent, and through
:mod:`edge_agent.contract.labelled_data` training, calibration, the accuracy gate and
``evaluate``, so the same file gives the same pixels everywhere.

The type comes from the magic bytes, never from the file name: a receiver that writes a FITS
file as ``.jpg`` still gets classified, and a text file named ``.png`` is rejected as
``wrong_type``. Every rejection is a :class:`DecodeError` with a reason code that the quarantine
and the ``errors`` topic carry:

- ``corrupt``: the bytes are of a known type but not a valid image (or a library refused them);
- ``truncated``: the file is empty or shorter than its own headers say (cut short);
- ``oversized``: above ``decode.max_bytes`` on disk, or its header promises more than
  ``decode.max_pixels`` pixels or ``decode.max_decoded_bytes`` decoded bytes;
- ``wrong_type``: not an image at all (no known magic bytes);
- ``unsupported``: an image this decoder does not take (GIF, JPEG 2000, a format the source
  excludes, a pickled NPY, a FITS cube without ``decode.fits.bands``...).

No input makes :func:`decode_bytes` raise anything else: headers are checked before any library
decodes (:mod:`~edge_agent.contract.image_headers`), and what a library raises on hostile bytes is
turned into ``corrupt``. What one input can cost is bounded: ``max_bytes`` read, then a decoded
array of at most ``max_decoded_bytes`` (its conversion to 8 bits takes a few times that for deep
data). Data deeper than 8 bits (16-bit PNG/TIFF, float NPY/FITS) is stretched to 8 bits by the
configured :class:`~edge_agent.contract.decode_config.StretchConfig`; NaN and infinities become
black.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Collection
from pathlib import Path

import cv2
import numpy as np

from edge_agent.contract.decode_config import ALL_FORMATS, DecodeConfig, StretchConfig
from edge_agent.contract.decode_error import DecodeError, Reason
from edge_agent.contract.fits_header import BLOCK, FitsHdu, read_hdus
from edge_agent.contract.image_headers import (
    ImageHeader,
    bmp_header,
    check_budget,
    jpeg_header,
    png_header,
    webp_header,
)
from edge_agent.contract.tiff_header import tiff_header

__all__ = ["DecodeError", "Reason", "decode_bytes", "decode_file", "sniff", "stretch"]

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NPY = b"\x93NUMPY"
_FITS = b"SIMPLE  ="
_BMP_INFO_SIZES = (12, 40, 52, 56, 108, 124)
_OTHER_IMAGES = {
    b"GIF8": "GIF",
    b"\x00\x00\x00\x0cjP": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000",
}
_HEADERS: dict[str, Callable[[bytes], ImageHeader]] = {
    "png": png_header,
    "jpeg": jpeg_header,
    "tiff": tiff_header,
    "bmp": bmp_header,
    "webp": webp_header,
}


def sniff(data: bytes) -> str | None:
    """The format name of ``data`` from its first bytes, or ``None`` when it is no known image."""
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    if data[:4] in _TIFF:
        return "tiff"
    if data.startswith(_NPY):
        return "npy"
    if data.startswith(_FITS):
        return "fits"
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_INFO_SIZES:
        return "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_file(
    path: Path, config: DecodeConfig, formats: Collection[str] = ALL_FORMATS
) -> np.ndarray:
    """Read ``path`` (refusing it unread when larger than ``max_bytes``) and decode it.

    Raises :class:`DecodeError` for anything wrong with the bytes, and ``OSError`` only when the
    file itself cannot be read (gone, unreadable): that is no fault of the input.
    """
    size = Path(path).stat().st_size
    if size > config.max_bytes:
        raise DecodeError("oversized", f"{size} bytes, above decode.max_bytes={config.max_bytes}")
    return decode_bytes(Path(path).read_bytes(), config, formats)


def decode_bytes(
    data: bytes, config: DecodeConfig, formats: Collection[str] = ALL_FORMATS
) -> np.ndarray:
    """Encoded bytes to a contiguous uint8 H x W x 3 RGB array; raises only :class:`DecodeError`."""
    if len(data) == 0:
        raise DecodeError("truncated", "empty input (0 bytes)")
    if len(data) > config.max_bytes:
        raise DecodeError(
            "oversized", f"{len(data)} bytes, above decode.max_bytes={config.max_bytes}"
        )
    kind = sniff(data)
    if kind is None:
        for magic, name in _OTHER_IMAGES.items():
            if data.startswith(magic):
                raise DecodeError(
                    "unsupported",
                    f"{name} images are not supported; send PNG/JPEG/TIFF/BMP/WebP/NPY/FITS",
                )
        raise DecodeError(
            "wrong_type", "not an image: the first bytes match no PNG/JPEG/TIFF/BMP/WebP/NPY/FITS"
        )
    if kind not in formats:
        raise DecodeError(
            "unsupported", f"{kind} is not among this source's formats ({', '.join(formats)})"
        )
    try:
        if kind == "npy":
            array = _decode_npy(data, config)
        elif kind == "fits":
            array = _decode_fits(data, config)
        else:
            array = _decode_opencv(data, kind, config)
        return _to_rgb8(array, config.stretch, bgr=kind not in ("npy", "fits"))
    except DecodeError:
        raise
    except MemoryError as exc:
        raise DecodeError(
            "oversized",
            f"{kind.upper()}: out of memory decoding it; lower decode.max_decoded_bytes",
        ) from exc
    except Exception as exc:  # the contract: hostile bytes make a library raise anything at all
        raise DecodeError("corrupt", f"{kind.upper()} decoder failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


# --- OpenCV formats (PNG, JPEG, TIFF, BMP, WebP) ---------------------------------------------


def _decode_opencv(data: bytes, kind: str, config: DecodeConfig) -> np.ndarray:
    header = _HEADERS[kind](data)
    check_budget(kind, header, config)
    if kind == "jpeg" and b"\xff\xd9" not in data[-64:]:
        raise DecodeError(
            "truncated", "JPEG without its end-of-image marker: the file was cut short"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DecodeError(
            "corrupt", f"{kind.upper()} that OpenCV refuses ({_one_line(exc)})"
        ) from exc
    if image is None or image.size == 0:
        raise DecodeError("corrupt", f"{kind.upper()} data that OpenCV cannot decode")
    if image.shape[:2] != (header.height, header.width):
        raise DecodeError(
            "corrupt",
            f"{kind.upper()} decoded to {image.shape[1]}x{image.shape[0]} pixels, "
            f"its header says {header.width}x{header.height}",
        )
    return image


# --- NPY -----------------------------------------------------------------------------------


def _decode_npy(data: bytes, config: DecodeConfig) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, SyntaxError) as exc:
        raise DecodeError("corrupt", f"NPY header unreadable ({exc})") from exc
    if dtype.hasobject:
        raise DecodeError("unsupported", "NPY of Python objects (pickles are never loaded)")
    if dtype.kind not in "buif":
        raise DecodeError("unsupported", f"NPY of dtype {dtype} (need integers or floats)")
    height, width = _npy_spatial(shape)
    array_bytes = math.prod(int(n) for n in shape) * dtype.itemsize
    check_budget("npy", ImageHeader(width, height, array_bytes), config)
    needed = stream.tell() + array_bytes
    if len(data) < needed:
        raise DecodeError("truncated", f"NPY holds {len(data)} of its {needed} bytes")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError("corrupt", f"NPY data unreadable ({exc})") from exc
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3, 4):
        array = np.moveaxis(array, 0, 2)  # C x H x W (as models store it) to H x W x C
    return np.ascontiguousarray(array)


def _npy_spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[1], shape[2]
    raise DecodeError(
        "unsupported", f"NPY of shape {shape}: need H x W, H x W x 1|3|4 or 1|3 x H x W"
    )


# --- FITS ----------------------------------------------------------------------------------


def _decode_fits(data: bytes, config: DecodeConfig) -> np.ndarray:
    if len(data) % BLOCK != 0:
        # Every FITS file is a whole number of 2880-byte blocks: anything else was cut short.
        raise DecodeError("truncated", f"FITS of {len(data)} bytes, not a multiple of {BLOCK}")
    hdus = read_hdus(data)
    hdu = _pick_hdu(hdus, config)
    check_budget("fits", ImageHeader(hdu.shape[-1], hdu.shape[-2], hdu.decoded_bytes), config)
    for before in hdus[: hdu.index + 1]:
        if before.end > len(data):
            raise DecodeError(
                "truncated",
                f"FITS HDU {before.index} needs {before.end} bytes, file has {len(data)}",
            )
    from astropy.io import fits  # lazy: astropy takes a second to import and most inputs are JPEG

    try:
        with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as opened:
            array = np.asarray(opened[hdu.index].data)
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DecodeError("corrupt", f"FITS unreadable ({_one_line(exc)})") from exc
    array = np.squeeze(array)
    if array.ndim == 3:
        bands = config.fits.bands
        if bands is None:
            if array.shape[0] not in (1, 3):
                raise DecodeError(
                    "unsupported",
                    f"FITS cube of {array.shape[0]} planes; set decode.fits.bands to 1 or 3 of them",
                )
            bands = list(range(array.shape[0]))
        if max(bands) >= array.shape[0]:
            raise DecodeError(
                "unsupported",
                f"decode.fits.bands {bands} outside the cube's {array.shape[0]} planes",
            )
        array = np.moveaxis(array[bands], 0, 2)
    elif array.ndim != 2:
        raise DecodeError("unsupported", f"FITS image of {array.ndim} dimensions (need 2 or 3)")
    # FITS rows run bottom-up; flip so the frame looks as a viewer (ds9, astropy) shows it.
    return np.ascontiguousarray(array[::-1], dtype=array.dtype.newbyteorder("="))  # one copy


def _pick_hdu(hdus: list[FitsHdu], config: DecodeConfig) -> FitsHdu:
    if config.fits.hdu is not None:
        if config.fits.hdu >= len(hdus):
            raise DecodeError(
                "unsupported", f"FITS has {len(hdus)} HDUs, decode.fits.hdu={config.fits.hdu}"
            )
        chosen = hdus[config.fits.hdu]
        if not chosen.is_image:
            raise DecodeError(
                "unsupported", f"FITS HDU {chosen.index} (decode.fits.hdu) holds no image"
            )
        return chosen
    for hdu in hdus:
        if hdu.is_image:
            return hdu
    raise DecodeError("unsupported", "FITS without an image HDU")


# --- to 8-bit RGB --------------------------------------------------------------------------


def stretch(data: np.ndarray, config: StretchConfig) -> np.ndarray:
    """Any numeric array to uint8 by the configured stretch; non-finite values become 0.

    Percentiles are taken over the finite values of this array (all bands together; the caller
    stretches bands one by one when it wants them balanced separately). One float32 array is
    worked on in place, so a stretch costs about 5 bytes per pixel besides its input.
    """
    finite = None if data.dtype.kind in "biu" else np.isfinite(data)
    flat = data.reshape(-1)
    if flat.size > 1_000_000:  # percentiles of a regular subsample: same answer, far faster
        flat = flat[:: flat.size // 1_000_000]
    values = flat.astype(np.float32)
    if finite is not None:
        values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    if config.method == "linear":
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (
            float(v) for v in np.percentile(values, [config.low_percentile, config.high_percentile])
        )
    if hi <= lo:
        above = data > lo
        if finite is not None:
            above &= finite
        return above.astype(np.uint8) * np.uint8(255)
    y = np.subtract(data, np.float32(lo), dtype=np.float32)
    with np.errstate(invalid="ignore"):
        np.divide(y, np.float32(hi - lo), out=y)
        np.clip(y, 0.0, 1.0, out=y)
        if config.method == "asinh":
            a = np.float32(config.asinh_a)
            np.divide(y, a, out=y)
            np.arcsinh(y, out=y)
            np.divide(y, np.arcsinh(np.float32(1.0) / a), out=y)
    if finite is not None:
        y[~finite] = 0.0
    np.multiply(y, np.float32(255.0), out=y)
    np.rint(y, out=y)
    return y.astype(np.uint8)


def _to_rgb8(array: np.ndarray, config: StretchConfig, *, bgr: bool) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        array = array[:, :, :1]
    if array.ndim == 3 and array.shape[2] == 4:  # drop alpha
        array = array[:, :, :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise DecodeError("unsupported", f"image of shape {array.shape}: need 1, 3 or 4 bands")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DecodeError("corrupt", f"image of shape {array.shape} has no pixels")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        if array.ndim == 3:
            array = np.stack([stretch(array[:, :, c], config) for c in range(3)], axis=2)
        else:
            array = stretch(array, config)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if bgr:
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)
