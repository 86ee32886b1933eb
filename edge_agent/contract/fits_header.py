"""The header-data units (HDUs) of a FITS file, read from their header cards before astropy runs.

FITS headers are 80-character cards in 2880-byte blocks; an HDU's data size follows from
``BITPIX``, ``NAXISn``, ``PCOUNT`` and ``GCOUNT`` (``ZBITPIX`` and ``ZNAXISn`` give the image of
a tile-compressed HDU). Reading them first tells the decoder which HDU holds the image, how large
it is, and whether its data is really in the file, so a 5 KB file claiming 20,000 x 20,000
float pixels is refused before anything is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_agent.contract.decode_error import DecodeError

BLOCK = 2880
_CARD = 80
_UNSIGNED_ZERO = {8: -128, 16: 1 << 15, 32: 1 << 31, 64: 1 << 63}  # astropy keeps these as ints


@dataclass(frozen=True)
class FitsHdu:
    """One HDU as its header describes it."""

    index: int
    is_image: bool
    shape: tuple[int, ...]  # of its image, in NumPy order (NAXISn, ..., NAXIS2, NAXIS1)
    decoded_bytes: int  # the image's array as astropy returns it (scaled: float), at most
    end: int  # byte just past its data; beyond the file's end when the file was cut short


def read_hdus(data: bytes) -> list[FitsHdu]:
    """Every HDU whose header is complete; a header cut short raises ``truncated``."""
    hdus: list[FitsHdu] = []
    pos = 0
    while pos < len(data):
        if pos > 0 and not data.startswith(b"XTENSION", pos):
            break  # trailing bytes that are no extension: astropy ignores them too
        cards, data_start = _cards(data, pos)
        hdu, data_bytes = _describe(len(hdus), cards, data_start)
        hdus.append(hdu)
        pos = data_start + -(-data_bytes // BLOCK) * BLOCK
        if hdu.end > len(data):
            break
    return hdus


def _cards(data: bytes, pos: int) -> tuple[dict[str, str], int]:
    cards: dict[str, str] = {}
    at = pos
    while True:
        if at + _CARD > len(data):
            raise DecodeError("truncated", f"FITS header at byte {pos} has no END card")
        card = data[at : at + _CARD].decode("latin-1")
        at += _CARD
        key = card[:8].strip()
        if key == "END":
            return cards, pos + -(-(at - pos) // BLOCK) * BLOCK
        if card[8:10] == "= " and key not in cards:
            cards[key] = _value(card[10:])


def _value(text: str) -> str:
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        return text[1:end].strip() if end > 0 else text[1:].strip()
    return text.split("/", 1)[0].strip()


def _int(cards: dict[str, str], key: str, default: int | None = None) -> int:
    if key not in cards:
        if default is None:
            raise DecodeError("corrupt", f"FITS header without {key}")
        return default
    try:
        return int(cards[key])
    except ValueError:
        raise DecodeError("corrupt", f"FITS {key} = {cards[key]!r} is not an integer") from None


def _float(cards: dict[str, str], key: str, default: float) -> float:
    try:
        return float(cards.get(key, default))
    except ValueError:
        raise DecodeError("corrupt", f"FITS {key} = {cards[key]!r} is not a number") from None


def _axes(cards: dict[str, str], prefix: str) -> list[int]:
    naxis = _int(cards, prefix)
    if not 0 <= naxis <= 999:
        raise DecodeError("corrupt", f"FITS {prefix} = {naxis}")
    axes = [_int(cards, f"{prefix}{i}") for i in range(1, naxis + 1)]
    if any(a < 0 for a in axes):
        raise DecodeError("corrupt", f"FITS with a negative axis length ({axes})")
    return axes


def _bitpix(cards: dict[str, str], key: str) -> int:
    bitpix = _int(cards, key)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise DecodeError("corrupt", f"FITS {key} = {bitpix}")
    return bitpix


def _describe(index: int, cards: dict[str, str], data_start: int) -> tuple[FitsHdu, int]:
    bitpix, axes = _bitpix(cards, "BITPIX"), _axes(cards, "NAXIS")
    pcount, gcount = _int(cards, "PCOUNT", 0), _int(cards, "GCOUNT", 1)
    if pcount < 0 or gcount < 0:
        raise DecodeError("corrupt", f"FITS PCOUNT={pcount}, GCOUNT={gcount}")
    if axes and axes[0] == 0 and cards.get("GROUPS") == "T":  # random groups
        elements = math.prod(axes[1:])
    else:
        elements = math.prod(axes) if axes else 0
    data_bytes = abs(bitpix) // 8 * gcount * (pcount + elements)
    extension = cards.get("XTENSION", "") if index > 0 else "PRIMARY"
    if index == 0 and cards.get("SIMPLE") != "T":
        raise DecodeError("corrupt", "FITS whose first card is not SIMPLE = T")
    image_axes, image_bitpix = axes, bitpix
    compressed = extension == "BINTABLE" and cards.get("ZIMAGE") == "T"
    if compressed:
        image_axes, image_bitpix = _axes(cards, "ZNAXIS"), _bitpix(cards, "ZBITPIX")
    is_image = (extension in ("PRIMARY", "IMAGE") or compressed) and len(image_axes) >= 2
    is_image = is_image and all(a > 0 for a in image_axes)
    item = abs(image_bitpix) // 8
    scale, zero = _float(cards, "BSCALE", 1.0), _float(cards, "BZERO", 0.0)
    scaled = scale != 1.0 or (zero != 0.0 and zero != _UNSIGNED_ZERO.get(image_bitpix))
    if scaled:  # astropy holds the raw and the float (32 bits up to 16, else 64) copies
        item += 4 if image_bitpix in (8, 16, -32) else 8
    if compressed:
        item += abs(image_bitpix) // 8  # the tiles decompressed before they are assembled
    shape = tuple(reversed(image_axes))
    decoded = math.prod(shape) * item if is_image else 0
    hdu = FitsHdu(index, is_image, shape, decoded, data_start + data_bytes)
    return hdu, data_bytes
