"""No input makes the decoder raise anything but DecodeError, and headers are checked before any
library decodes (issue 7, defects 1 and 2). The memory bound itself is proved in
test_decode_memory.py."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from astropy.io import fits
from image_bombs import fits_header, header_bombs, jpeg_sof_bomb, png, png_chunk, tiff

from edge_agent.contract.decode import DecodeError, decode_bytes
from edge_agent.contract.decode_config import DecodeConfig

CFG = DecodeConfig()
RGB = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def _fits(hdu: fits.PrimaryHDU | fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def _valid_files() -> dict[str, bytes]:
    grey16 = (np.arange(24 * 40).reshape(24, 40) * 50).astype(np.uint16)
    compressed = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(RGB[:, :, 0].astype(np.int16))])
    return {
        "png": _encode(".png", RGB),
        "png16": _encode(".png", grey16),
        "jpeg": _encode(".jpg", RGB),
        "jpeg-progressive": _encode(".jpg", RGB, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "tiff": _encode(".tiff", RGB),
        "bmp": _encode(".bmp", RGB),
        "webp-lossless": _encode(".webp", RGB, (cv2.IMWRITE_WEBP_QUALITY, 101)),
        "webp-lossy": _encode(".webp", RGB, (cv2.IMWRITE_WEBP_QUALITY, 80)),
        "npy": _npy(RGB),
        "fits": _fits(fits.PrimaryHDU(RGB[:, :, 0].astype(np.float32))),
        "fits-compressed": _fits(compressed),
    }


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(_valid_files()))
def test_every_supported_format_decodes(name: str) -> None:
    out = decode_bytes(_valid_files()[name], CFG)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    if name in ("png", "tiff", "bmp", "webp-lossless"):
        np.testing.assert_array_equal(out, RGB[:, :, ::-1])  # written as BGR, read back as RGB


def _mutations(data: bytes, rng: np.random.Generator) -> list[bytes]:
    out = [data[:cut] for cut in sorted({int(c) for c in rng.integers(1, len(data), 8)})]
    for _ in range(40):
        mutated = bytearray(data)
        span = min(len(data), 160) if rng.random() < 0.7 else len(data)
        for _ in range(int(rng.integers(1, 5))):
            at = int(rng.integers(0, span))
            if rng.random() < 0.3 and at + 4 <= len(data):  # a huge length or size field
                mutated[at : at + 4] = bytes(rng.choice([b"\xff\xff\xff\x7f", b"\x7f\xff\xff\xf0"]))
            else:
                mutated[at] = int(rng.integers(0, 256))
        out.append(bytes(mutated))
    return out


@pytest.mark.parametrize("name", sorted(_valid_files()))
def test_mutated_files_decode_or_raise_decode_error_only(name: str) -> None:
    config = DecodeConfig(max_pixels=1_000_000, max_decoded_bytes=16 * 1024 * 1024)
    rng = np.random.default_rng(sum(name.encode()))
    for data in _mutations(_valid_files()[name], rng):
        try:
            out = decode_bytes(data, config)
        except DecodeError as exc:
            assert exc.reason in ("corrupt", "truncated", "oversized", "wrong_type", "unsupported")
            assert str(exc)
        else:
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def test_opencv_errors_become_decode_errors() -> None:
    """The 210-byte TIFF of issue 7: with the header checks out of the way (limits raised far
    above any real image), OpenCV's own cv2.error still comes out as a DecodeError."""
    bomb = tiff(100_000, 100_000)
    with pytest.raises(DecodeError) as info:
        decode_bytes(bomb, CFG)
    assert info.value.reason == "oversized" and "100000x100000" in str(info.value)
    lax = DecodeConfig(max_pixels=10**12, max_decoded_bytes=10**13)
    with pytest.raises(DecodeError) as info:
        decode_bytes(bomb, lax)
    assert info.value.reason == "corrupt" and "error" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(header_bombs()))
def test_header_bombs_refused_before_decoding(name: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(header_bombs()[name], CFG)
    assert info.value.reason in ("oversized", "truncated"), str(info.value)


def test_decoded_bytes_cap_is_configurable() -> None:
    grey16 = np.zeros((1000, 1000), np.uint16)  # 2,000,000 decoded bytes
    data = _encode(".png", grey16)
    assert decode_bytes(data, CFG).shape == (1000, 1000, 3)
    with pytest.raises(DecodeError) as info:
        decode_bytes(data, DecodeConfig(max_decoded_bytes=1024 * 1024))
    assert info.value.reason == "oversized" and "decode.max_decoded_bytes" in str(info.value)


_NO_END = b"SIMPLE  =                    T".ljust(2880)


def _png_with(*chunks: bytes) -> bytes:
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00\x00" * 4))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks or (idat,)) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (_png_with(), None, ""),
        (png(4, 4, depth=3, colour=2), "corrupt", "bit depth"),
        (png(0, 4), "corrupt", "0x4"),
        (_png_with()[:-12] + struct.pack(">I", 1000) + b"tEXt" + b"x" * 30, "truncated", "tEXt"),
        (_png_with(png_chunk(b"tEXt", b"abc")), "corrupt", "IDAT"),
        (
            _png_with(png_chunk(b"fcTL", struct.pack(">IIIII", 0, 8, 8, 0, 0) + b"\x00" * 6)),
            "corrupt",
            "APNG",
        ),
        (jpeg_sof_bomb(height=0, width=16), "unsupported", "DNL"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 64 + b"\xff\xd9", "corrupt", "SOF"),
        (tiff(16, 16, body=256)[:200], "truncated", "TIFF"),
        (_NO_END, "truncated", "END"),
        (fits_header({"SIMPLE": True, "BITPIX": 7, "NAXIS": 0}), "corrupt", "BITPIX"),
        (
            fits_header({"SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": 100, "NAXIS2": 100})
            + b"\x00" * 2880 * 2,
            "truncated",
            "HDU 0",
        ),
        (fits_header({"SIMPLE": True, "BITPIX": 8, "NAXIS": 0}), "unsupported", "image HDU"),
    ],
    ids=[
        "png-ok",
        "png-bad-depth",
        "png-zero-width",
        "png-chunk-past-end",
        "png-no-idat",
        "apng-frame-outside",
        "jpeg-dnl",
        "jpeg-scan-before-frame",
        "tiff-strip-past-end",
        "fits-no-end",
        "fits-bad-bitpix",
        "fits-data-cut-at-block",
        "fits-no-image",
    ],
)
def test_header_checks(data: bytes, reason: str | None, words: str) -> None:
    if reason is None:
        assert decode_bytes(data, CFG).shape == (4, 4, 3)
        return
    with pytest.raises(DecodeError) as info:
        decode_bytes(data, CFG)
    assert info.value.reason == reason, str(info.value)
    assert words.lower() in str(info.value).lower()


def test_riff_that_is_not_webp_is_wrong_type() -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40, CFG)
    assert info.value.reason == "wrong_type"
