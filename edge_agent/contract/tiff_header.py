"""The first image directory (IFD) of a TIFF or BigTIFF, read and checked before libtiff sees it.

OpenCV decodes the first page only, so only IFD 0 is read: width, length, bits and samples per
pixel, and the strip or tile layout. Every offset and byte count must lie inside the file
(``truncated`` otherwise), the strip or tile buffer and the image must fit the decoding budget
(``oversized``), and anything that cannot be an image is ``corrupt``. A 200-byte file claiming
100,000 x 100,000 pixels is refused here, not by OpenCV's ``cv2.error``.
"""

from __future__ import annotations

import struct

from edge_agent.contract.decode_error import DecodeError
from edge_agent.contract.image_headers import ImageHeader

# Field type -> size in bytes of one value (TIFF 6.0 and BigTIFF).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TYPE_SIZES |= {13: 4, 16: 8, 17: 8, 18: 8}
_INT_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}

_WIDTH, _LENGTH, _BITS, _SAMPLES, _ROWS_PER_STRIP = 256, 257, 258, 277, 278
_STRIP_OFFSETS, _STRIP_COUNTS = 273, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325
_WANTED = {_WIDTH, _LENGTH, _BITS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_OFFSETS, _STRIP_COUNTS}
_WANTED |= {_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS}


def tiff_header(data: bytes) -> ImageHeader:
    """Size and decoding cost of the first page; raises :class:`DecodeError` when unsafe."""
    tags = _read_ifd0(data)
    width, height = _one(tags, _WIDTH), _one(tags, _LENGTH)
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt", f"TIFF of {width}x{height} pixels")
    samples = _one(tags, _SAMPLES, 1)
    bits = max(tags.get(_BITS, [1]))
    if not (1 <= samples <= 16 and 1 <= bits <= 64):
        raise DecodeError("corrupt", f"TIFF of {samples} samples of {bits} bits")
    sample_bytes = samples * -(-bits // 8)
    if _TILE_OFFSETS in tags:
        block_w, block_h = _one(tags, _TILE_WIDTH), _one(tags, _TILE_LENGTH)
        offsets, counts = tags[_TILE_OFFSETS], tags.get(_TILE_COUNTS, [])
    elif _STRIP_OFFSETS in tags:
        block_w, block_h = width, min(_one(tags, _ROWS_PER_STRIP, height), height)
        offsets, counts = tags[_STRIP_OFFSETS], tags.get(_STRIP_COUNTS, [])
    else:
        raise DecodeError("corrupt", "TIFF without strips or tiles")
    if block_w <= 0 or block_h <= 0 or len(counts) != len(offsets):
        raise DecodeError("corrupt", "TIFF whose strip or tile layout is inconsistent")
    for offset, count in zip(offsets, counts, strict=True):
        if offset < 0 or count < 0:
            raise DecodeError("corrupt", f"TIFF data at byte {offset} of {count} bytes")
        if offset + count > len(data):
            raise DecodeError(
                "truncated", f"TIFF data at byte {offset} (+{count}) past its {len(data)} bytes"
            )
    # OpenCV decodes one strip or tile into a buffer of its own, then into the image.
    decoded = (width * height + block_w * block_h) * max(sample_bytes, 3)
    return ImageHeader(width, height, decoded)


def _one(tags: dict[int, list[int]], tag: int, default: int | None = None) -> int:
    values = tags.get(tag)
    if not values:
        if default is None:
            raise DecodeError("corrupt", f"TIFF without its required tag {tag}")
        return default
    return values[0]


def _read_ifd0(data: bytes) -> dict[int, list[int]]:
    n = len(data)
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        if n < 16:
            raise DecodeError("truncated", f"BigTIFF of {n} bytes, shorter than its header")
        (where,) = struct.unpack(order + "Q", data[8:16])
        count_fmt, entry_size, field_size = "Q", 20, 8
    else:
        if n < 8:
            raise DecodeError("truncated", f"TIFF of {n} bytes, shorter than its header")
        (where,) = struct.unpack(order + "I", data[4:8])
        count_fmt, entry_size, field_size = "H", 12, 4
    count_size = struct.calcsize(count_fmt)
    if where < 8 or where + count_size > n:
        raise DecodeError("truncated", f"TIFF directory at byte {where}, past its {n} bytes")
    (entries,) = struct.unpack(order + count_fmt, data[where : where + count_size])
    start = where + count_size
    if entries == 0:
        raise DecodeError("corrupt", "TIFF directory without entries")
    if start + entries * entry_size > n:
        raise DecodeError("truncated", f"TIFF directory of {entries} entries past its {n} bytes")
    entry_fmt = order + ("HHQ" if big else "HHI")
    tags: dict[int, list[int]] = {}
    for i in range(entries):
        at = start + i * entry_size
        tag, kind, count = struct.unpack(entry_fmt, data[at : at + entry_size - field_size])
        if tag not in _WANTED:
            continue
        if kind not in _INT_FORMATS:
            raise DecodeError("corrupt", f"TIFF tag {tag} of non-integer type {kind}")
        size = _TYPE_SIZES[kind] * count
        field = at + entry_size - field_size
        if size > field_size:
            (field,) = struct.unpack(
                order + ("Q" if big else "I"), data[field : field + field_size]
            )
        if field + size > n:
            raise DecodeError("truncated", f"TIFF tag {tag} values past the file's {n} bytes")
        tags[tag] = list(
            struct.unpack(f"{order}{count}{_INT_FORMATS[kind]}", data[field : field + size])
        )
    return tags
