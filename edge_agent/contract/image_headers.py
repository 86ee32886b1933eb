"""What an image file's header promises, read and checked before any pixel is decoded.

A decoder believes its header: a 93 KB PNG whose IDAT chunk claims 2 GiB, or a 200-byte TIFF
that claims 100,000 x 100,000 pixels, makes OpenCV allocate gigabytes or raise. So the header is
parsed here first, with nothing but :mod:`struct`, and the file is refused (``truncated``,
``corrupt``, ``oversized``, ``unsupported``) unless every length it states fits in the bytes
actually present and the image it promises fits ``decode.max_pixels`` and
``decode.max_decoded_bytes``. Only then does a library decode it.

:class:`ImageHeader.decoded_bytes` is an upper estimate of the largest buffer the decoder will
allocate for the file: every band OpenCV may produce (a palette or grey + alpha PNG becomes four
8-bit bands) at the sample size it keeps (16 bits stay 16), plus libjpeg's whole-image
coefficient buffer for progressive JPEGs. TIFF lives in :mod:`~edge_agent.contract.tiff_header`,
FITS in :mod:`~edge_agent.contract.fits_header`; NPY headers are checked by the decoder itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.decode_error import DecodeError


@dataclass(frozen=True)
class ImageHeader:
    """The size of the image a header promises, and what decoding it will cost at most."""

    width: int
    height: int
    decoded_bytes: int


def check_budget(kind: str, header: ImageHeader, config: DecodeConfig) -> None:
    """Refuse (``oversized``) an image above ``decode.max_pixels`` or ``max_decoded_bytes``."""
    width, height = header.width, header.height
    if width * height > config.max_pixels:
        raise DecodeError(
            "oversized",
            f"{kind.upper()} header claims {width}x{height} pixels, "
            f"above decode.max_pixels={config.max_pixels}",
        )
    if header.decoded_bytes > config.max_decoded_bytes:
        raise DecodeError(
            "oversized",
            f"{kind.upper()} of {width}x{height} pixels would decode to "
            f"{header.decoded_bytes} bytes, above decode.max_decoded_bytes="
            f"{config.max_decoded_bytes}",
        )


# --- PNG -------------------------------------------------------------------------------------

# Colour type -> (allowed bit depths, bands OpenCV produces with IMREAD_UNCHANGED, at most).
_PNG_COLOURS = {
    0: ((1, 2, 4, 8, 16), 1),
    2: ((8, 16), 3),
    3: ((1, 2, 4, 8), 4),
    4: ((8, 16), 4),
    6: ((8, 16), 4),
}


def png_header(data: bytes) -> ImageHeader:
    """Walk every chunk up to IEND, checking each length against the bytes present."""
    n, pos = len(data), 8
    header: ImageHeader | None = None
    seen_idat = False
    while True:
        if pos + 12 > n:
            raise DecodeError("truncated", f"PNG ends at byte {n} inside its chunks (no IEND)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise DecodeError("corrupt", f"PNG chunk at byte {pos} is malformed")
        if pos + 12 + length > n:
            raise DecodeError(
                "truncated",
                f"PNG chunk {kind.decode()} at byte {pos} claims {length} bytes; "
                f"only {n - pos - 12} are present",
            )
        body = data[pos + 8 : pos + 8 + min(length, 20)]  # the fields read below, no more
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise DecodeError("corrupt", "PNG whose first chunk is not a 13-byte IHDR")
            header = _png_ihdr(body)
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"fcTL" and length >= 20:  # an APNG frame must lie inside the canvas
            width, height, x, y = struct.unpack(">IIII", body[4:20])
            if x + width > header.width or y + height > header.height:
                raise DecodeError("corrupt", "APNG frame larger than the image it belongs to")
        elif kind == b"IEND":
            break
        pos += 12 + length
    if not seen_idat:
        raise DecodeError("corrupt", "PNG without image data (no IDAT chunk)")
    return header


def _png_ihdr(body: bytes) -> ImageHeader:
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
        raise DecodeError("corrupt", f"PNG of {width}x{height} pixels")
    if colour not in _PNG_COLOURS or depth not in _PNG_COLOURS[colour][0]:
        raise DecodeError("corrupt", f"PNG of colour type {colour} and bit depth {depth}")
    bands = _PNG_COLOURS[colour][1]
    return ImageHeader(width, height, width * height * bands * (2 if depth == 16 else 1))


# --- JPEG ------------------------------------------------------------------------------------

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def jpeg_header(data: bytes) -> ImageHeader:
    """Walk the marker segments up to the first scan; the frame header (SOF) must come first."""
    n, pos = len(data), 2
    header: ImageHeader | None = None
    while True:
        if pos + 4 > n:
            raise DecodeError("truncated", f"JPEG ends at byte {n} before its first scan")
        if data[pos] != 0xFF:
            raise DecodeError("corrupt", f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker == 0xD9:
            raise DecodeError("corrupt", "JPEG that ends (EOI) before any image data")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise DecodeError("corrupt", f"JPEG segment at byte {pos} of length {length}")
        if pos + 2 + length > n:
            raise DecodeError(
                "truncated", f"JPEG segment at byte {pos} claims {length} bytes past the end"
            )
        if marker in _SOF and header is None:
            header = _jpeg_sof(marker, data[pos + 4 : pos + 2 + length])
        elif marker == 0xDA:
            if header is None:
                raise DecodeError("corrupt", "JPEG scan before its frame header (no SOF)")
            return header
        pos += 2 + length


def _jpeg_sof(marker: int, body: bytes) -> ImageHeader:
    if len(body) < 6:
        raise DecodeError("corrupt", "JPEG frame header (SOF) too short")
    precision, height, width, components = struct.unpack(">BHHB", body[:6])
    if len(body) < 6 + 3 * components or components == 0 or width == 0:
        raise DecodeError("corrupt", f"JPEG frame header of {width}x{height}x{components}")
    if height == 0:
        raise DecodeError("unsupported", "JPEG whose height comes later (DNL marker)")
    pixels = width * height
    decoded = pixels * max(components, 3) * (2 if precision > 8 else 1)
    if marker in _PROGRESSIVE:  # libjpeg keeps every DCT coefficient (2 bytes) of every band
        decoded += pixels * components * 2
    return ImageHeader(width, height, decoded)


# --- BMP -------------------------------------------------------------------------------------


def bmp_header(data: bytes) -> ImageHeader:
    """The BITMAPINFOHEADER (or the OS/2 core header) and the pixel array's extent."""
    n = len(data)
    if n < 26:
        raise DecodeError("truncated", f"BMP of {n} bytes, shorter than its headers")
    (pixel_offset, info_size) = struct.unpack("<II", data[10:18])
    if info_size == 12:
        width, height, _planes, bits = struct.unpack("<HHHH", data[18:26])
        compression = 0
    elif 40 <= info_size <= 124:
        if n < 14 + 40:
            raise DecodeError("truncated", f"BMP of {n} bytes, shorter than its headers")
        width, height, _planes, bits, compression = struct.unpack("<iiHHI", data[18:34])
    else:
        raise DecodeError("corrupt", f"BMP info header of {info_size} bytes")
    height = abs(height)  # negative: rows stored top-down
    if width <= 0 or height == 0 or bits not in (1, 4, 8, 16, 24, 32):
        raise DecodeError("corrupt", f"BMP of {width}x{height} pixels at {bits} bits")
    if compression in (4, 5):
        raise DecodeError("unsupported", "BMP wrapping a JPEG or PNG; send that file instead")
    if compression in (0, 3, 6):  # uncompressed: the pixel array's size is known
        stride = (width * bits + 31) // 32 * 4
        if pixel_offset + stride * height > n:
            raise DecodeError(
                "truncated", f"BMP holds {n} bytes, its {width}x{height} pixels need more"
            )
    return ImageHeader(width, height, width * height * 4)


# --- WebP ------------------------------------------------------------------------------------


def webp_header(data: bytes) -> ImageHeader:
    """The RIFF size and the canvas of the first chunk (VP8, VP8L or VP8X)."""
    n = len(data)
    if n < 30:
        raise DecodeError("truncated", f"WebP of {n} bytes, shorter than its headers")
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > n:
        raise DecodeError("truncated", f"WebP claims {riff_size + 8} bytes, holds {n}")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise DecodeError("corrupt", "WebP (lossy) without its start code")
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise DecodeError("corrupt", "WebP (lossless) without its signature")
        (bits,) = struct.unpack("<I", data[21:25])
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise DecodeError("corrupt", f"WebP whose first chunk is {chunk!r}")
    if width == 0 or height == 0:
        raise DecodeError("corrupt", f"WebP of {width}x{height} pixels")
    return ImageHeader(width, height, width * height * 4)
