"""Small files whose headers claim huge images: the hostile corpus of the decoder's tests.

Each builder returns the bytes of one file that is a few hundred bytes to ~100 KB on disk but
whose header, if believed, would make a decoder allocate gigabytes. Other suites (the fault
suite) may reuse :func:`header_bombs`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png(width: int, height: int, depth: int = 8, colour: int = 2, body: bytes = b"") -> bytes:
    """A PNG with the given IHDR and one IDAT holding ``body`` (default: a few zero rows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = body or zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_idat_length_bomb() -> bytes:
    """A real ~100 KB PNG whose first IDAT claims 0x7FFFFFF0 bytes (issue 7, defect 2)."""
    pixels = np.random.default_rng(0).integers(0, 256, (180, 180, 3), dtype=np.uint8)
    import cv2

    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    data = bytearray(encoded.tobytes())
    at = data.index(b"IDAT") - 4
    data[at : at + 4] = struct.pack(">I", 0x7FFFFFF0)
    return bytes(data)


def tiff(
    width: int,
    height: int,
    *,
    bits: int = 8,
    samples: int = 1,
    tile: tuple[int, int] | None = None,
    body: int = 64,
) -> bytes:
    """A little-endian TIFF with one IFD (strips, or one tile) and ``body`` bytes of data."""
    entries: list[tuple[int, int, int, int]] = [  # tag, type, count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1 if samples == 1 else 2),
        (277, 3, 1, samples),
    ]
    data_at = 8
    if tile is None:
        entries += [(273, 4, 1, data_at), (278, 4, 1, height), (279, 4, 1, body)]
    else:
        entries += [
            (322, 4, 1, tile[0]),
            (323, 4, 1, tile[1]),
            (324, 4, 1, data_at),
            (325, 4, 1, body),
        ]
    entries.sort()
    ifd_at = data_at + body + (body % 2)
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at))
    out += b"\x00" * (ifd_at - 8)
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)
    return bytes(out)


def jpeg_sof_bomb(height: int = 65535, width: int = 65535) -> bytes:
    """A real small JPEG whose SOF0 claims ``width`` x ``height`` pixels."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def fits_header(cards: dict[str, object]) -> bytes:
    """A FITS header block (or blocks) from ``cards``, ended by END and padded to 2880."""
    lines = []
    for key, value in cards.items():
        if isinstance(value, bool):
            text = "T" if value else "F"
        elif isinstance(value, str):
            text = f"'{value:<8}'"
        else:
            text = str(value)
        lines.append(f"{key:<8}= {text:>20}".ljust(80))
    lines.append("END".ljust(80))
    raw = "".join(lines).encode("ascii")
    return raw + b" " * (-len(raw) % 2880)


def fits_bomb(side: int = 20000, bitpix: int = -32, body_blocks: int = 1) -> bytes:
    """A FITS header claiming ``side`` x ``side`` pixels followed by a tiny body."""
    cards: dict[str, object] = {
        "SIMPLE": True,
        "BITPIX": bitpix,
        "NAXIS": 2,
        "NAXIS1": side,
        "NAXIS2": side,
    }
    return fits_header(cards) + b"\x00" * (2880 * body_blocks)


def npy_bomb(shape: tuple[int, ...] = (100_000, 100_000), dtype: str = "<f4") -> bytes:
    """An NPY header claiming ``shape`` followed by 64 bytes of data."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\x00" * 64


def bmp_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A BMP whose info header claims ``width`` x ``height`` 24-bit pixels, with 64 bytes of them."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = b"\x00" * 64
    head = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, 14 + len(info))
    return head + info + body


def webp_bomb(width: int = 16384, height: int = 16384) -> bytes:
    """An extended (VP8X) WebP whose canvas claims ``width`` x ``height`` pixels."""
    vp8x = (
        struct.pack("<I", 0)
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def header_bombs() -> dict[str, bytes]:
    """Every bomb by name: each must be refused with a DecodeError before any big allocation."""
    return {
        "png-idat-length": png_idat_length_bomb(),
        "png-ihdr-100k": png(100_000, 100_000),
        "png-ihdr-rgba16-7k": png(7000, 7000, depth=16, colour=6),
        "tiff-100k": tiff(100_000, 100_000),
        "tiff-tile-64k": tiff(64, 64, tile=(65536, 65536)),
        "tiff-rgb-float64-7k": tiff(7000, 7000, bits=64, samples=3),
        "jpeg-sof-65535": jpeg_sof_bomb(),
        "fits-20000": fits_bomb(),
        "fits-float64-7k": fits_bomb(7000, bitpix=-64),
        "npy-100k": npy_bomb(),
        "npy-float64-7k": npy_bomb((7000, 7000), "<f8"),
        "bmp-100k": bmp_bomb(),
        "webp-16k": webp_bomb(),
    }
