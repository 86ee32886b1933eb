from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits

from edge_agent.contract.decode import DecodeError, decode_bytes, decode_file, sniff, stretch
from edge_agent.contract.decode_config import DecodeConfig, StretchConfig

CFG = DecodeConfig()
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def encode(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def fits_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_lossless_rgb_roundtrip(ext: str) -> None:
    out = decode_bytes(encode(ext, RGB[:, :, ::-1]), CFG)  # OpenCV writes BGR
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_is_rgb() -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[:, :, 2] = 255  # BGR red
    out = decode_bytes(encode(".jpg", red), CFG)
    assert out[8, 8, 0] > 240 and out[8, 8, 2] < 15


def test_grey_to_three_bands_and_alpha_dropped() -> None:
    grey = RGB[:, :, 0]
    out = decode_bytes(encode(".png", grey), CFG)
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)
    bgra = np.dstack([RGB[:, :, ::-1], np.full((20, 30), 7, np.uint8)])
    np.testing.assert_array_equal(decode_bytes(encode(".png", bgra), CFG), RGB)


def test_16bit_png_is_stretched_linear() -> None:
    ramp = np.linspace(1000, 2000, 20 * 30).reshape(20, 30).astype(np.uint16)
    cfg = DecodeConfig(stretch=StretchConfig(method="linear"))
    out = decode_bytes(encode(".png", ramp), cfg)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.all(np.diff(out[:, :, 0].ravel().astype(int)) >= 0)


def test_npy_hwc_chw_and_float() -> None:
    np.testing.assert_array_equal(decode_bytes(npy(RGB), CFG), RGB)
    np.testing.assert_array_equal(decode_bytes(npy(np.moveaxis(RGB, 2, 0).copy()), CFG), RGB)
    f = RNG.normal(size=(10, 12)).astype(np.float32)
    f[0, 0] = np.nan
    out = decode_bytes(npy(f), CFG)
    assert out.shape == (10, 12, 3) and out[0, 0, 0] == 0


def test_npy_pickle_refused() -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(npy(np.array([{"a": 1}], dtype=object)), CFG)
    assert info.value.reason == "unsupported"


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32, np.float64])
def test_fits_grey_deep_data(dtype: type) -> None:
    data = (np.arange(24 * 32).reshape(24, 32) * 3).astype(dtype)
    cfg = DecodeConfig(stretch=StretchConfig(method="linear"))
    out = decode_bytes(fits_bytes(data), cfg)
    assert out.shape == (24, 32, 3)
    # FITS row 0 is the bottom: the decoded frame shows it last.
    assert out[-1, 0, 0] == 0 and out[0, -1, 0] == 255


def test_fits_three_bands_and_nan() -> None:
    cube = RNG.normal(100, 10, (3, 16, 20)).astype(np.float32)
    cube[1, 5, 5] = np.nan
    cube[2] += 1000  # per-band stretch: a bright band does not wash out the others
    out = decode_bytes(fits_bytes(cube), CFG)
    assert out.shape == (16, 20, 3)
    assert out[16 - 1 - 5, 5, 1] == 0
    assert abs(float(out[:, :, 0].mean()) - float(out[:, :, 2].mean())) < 40


def test_fits_cube_needs_bands() -> None:
    cube = RNG.normal(size=(5, 8, 8)).astype(np.float32)
    with pytest.raises(DecodeError) as info:
        decode_bytes(fits_bytes(cube), CFG)
    assert info.value.reason == "unsupported" and "decode.fits.bands" in str(info.value)
    cfg = DecodeConfig.model_validate({"fits": {"bands": [4, 2, 0]}})
    assert decode_bytes(fits_bytes(cube), cfg).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"hello, this is text", "wrong_type"),
        (b"GIF89a" + b"\0" * 20, "unsupported"),
        (encode(".png", RGB)[:-30], "truncated"),
        (encode(".jpg", RGB)[:200], "truncated"),
        (npy(RGB)[:-10], "truncated"),
        (fits_bytes(np.zeros((8, 8), np.float32))[:-100], "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 + b"IEND\xaeB`\x82", "corrupt"),
        (b"II*\x00" + b"\x07" * 64, "truncated"),
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, "corrupt"),
    ],
    ids=[
        "empty",
        "text",
        "gif",
        "png-cut",
        "jpeg-cut",
        "npy-cut",
        "fits-cut",
        "png-junk",
        "tiff-ifd-past-end",
        "tiff-empty-ifd",
    ],
)
def test_bad_inputs(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_bytes(data, CFG)
    assert info.value.reason == reason, str(info.value)


def test_oversized_bytes_and_pixels(tmp_path: Path) -> None:
    big = encode(".png", np.zeros((100, 100, 3), np.uint8))
    cfg = DecodeConfig(max_bytes=1024, max_pixels=64 * 64)
    path = tmp_path / "x.png"
    path.write_bytes(big + b"\0" * 2000)
    with pytest.raises(DecodeError) as info:
        decode_file(path, cfg)
    assert info.value.reason == "oversized"
    with pytest.raises(DecodeError) as info:
        decode_bytes(big, DecodeConfig(max_pixels=64 * 64))
    assert info.value.reason == "oversized" and "100x100" in str(info.value)
    with pytest.raises(DecodeError) as info:
        decode_bytes(npy(np.zeros((100, 100), np.uint8)), DecodeConfig(max_pixels=64 * 64))
    assert info.value.reason == "oversized"


def test_type_from_magic_not_name(tmp_path: Path) -> None:
    path = tmp_path / "really_fits.jpg"
    path.write_bytes(fits_bytes(np.ones((8, 8), np.float32)))
    assert sniff(path.read_bytes()) == "fits"
    assert decode_file(path, CFG).shape == (8, 8, 3)
    with pytest.raises(DecodeError) as info:
        decode_bytes(encode(".png", RGB), CFG, formats=("jpeg",))
    assert info.value.reason == "unsupported"


def test_stretch_methods() -> None:
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    lin = stretch(x, StretchConfig(method="linear"))
    asinh = stretch(x, StretchConfig(method="asinh", low_percentile=0.0, high_percentile=100.0))
    assert lin[0] == 0 and lin[-1] == 255 and asinh[-1] == 255
    assert asinh[100] > lin[100]  # asinh lifts faint values
    clipped = stretch(x, StretchConfig(method="percentile", low_percentile=10, high_percentile=90))
    assert clipped[50] == 0 and clipped[950] == 255
    assert stretch(np.full((4, 4), np.nan), StretchConfig()).max() == 0
