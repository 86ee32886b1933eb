"""The raw FITS reader: physical values from every storage type, bands, sizes checked first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from edge_agent.contract.decode import DecodeError
from edge_agent.contract.decode_config import DecodeConfig, FitsConfig
from edge_agent.fields.raw import read_fits, read_fits_bands, saturation_level
from edge_agent.fields.settings import FieldsConfig
from edge_agent.fields.stage import read_field

VALUES = np.array([[0.0, 1.0, 2.0], [1000.0, 40000.0, 65535.0]])


def write(path: Path, hdu: fits.PrimaryHDU) -> Path:
    hdu.writeto(path)
    return path


def test_uint16_float32_and_scaled_int16_give_the_physical_values(tmp_path: Path) -> None:
    u16 = write(tmp_path / "u16.fits", fits.PrimaryHDU(VALUES.astype(np.uint16)))
    assert fits.getheader(u16)["BZERO"] == 32768  # how FITS stores unsigned 16-bit
    f32 = write(tmp_path / "f32.fits", fits.PrimaryHDU(VALUES.astype(np.float32)))
    scaled = fits.PrimaryHDU(VALUES.astype(np.float32))
    scaled.scale("int16", bscale=2.0, bzero=32768.0)
    s16 = write(tmp_path / "s16.fits", scaled)
    for path in (u16, f32, s16):
        raw = read_fits(path, DecodeConfig())
        assert raw.data.dtype == np.float32 and raw.data.shape == (1, 2, 3)
        np.testing.assert_allclose(raw.data[0], VALUES, atol=1.0)  # BSCALE 2 rounds to 2 ADU
    assert read_fits(u16, DecodeConfig()).saturation == [65535.0]
    assert read_fits(f32, DecodeConfig()).saturation == [None]
    assert read_fits(s16, DecodeConfig()).saturation == [32767 * 2.0 + 32768.0]


def test_saturate_keyword_wins_over_the_type() -> None:
    header = fits.Header({"BITPIX": 16, "BZERO": 32768, "SATURATE": 60000})
    assert saturation_level(header) == 60000.0
    assert saturation_level(fits.Header({"BITPIX": 8})) == 255.0


def test_three_planes_in_one_hdu_and_three_files_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cube = rng.normal(100, 5, (3, 40, 50)).astype(np.float32)
    one = read_fits(write(tmp_path / "cube.fits", fits.PrimaryHDU(cube)), DecodeConfig())
    np.testing.assert_array_equal(one.data, cube)
    zrg = read_fits(tmp_path / "cube.fits", DecodeConfig(), band_order="zrg")
    np.testing.assert_array_equal(zrg.data, cube[::-1])
    files = [write(tmp_path / f"{b}.fits", fits.PrimaryHDU(cube[i])) for i, b in enumerate("grz")]
    three = read_field(files, DecodeConfig(), FieldsConfig())
    np.testing.assert_array_equal(three.data, cube)
    picked = read_fits(tmp_path / "cube.fits", DecodeConfig(fits=FitsConfig(bands=[1])))
    np.testing.assert_array_equal(picked.data, cube[1:2])


def test_three_band_hdus_in_one_file_are_the_three_planes(tmp_path: Path) -> None:
    """One file with a g, r and z HDU (the issue's third form of a three-band frame): ordered
    by their FILTER cards when they name the bands, else in file order; the first's header."""
    rng = np.random.default_rng(1)
    cube = rng.normal(100, 5, (3, 20, 30)).astype(np.float32)

    def hdus(order: str, named: bool) -> fits.HDUList:
        out = fits.HDUList([fits.PrimaryHDU()])
        for band in order:
            hdu = fits.ImageHDU(cube["grz".index(band)])
            if named:
                hdu.header["FILTER"] = f"{band} DECam"
            hdu.header["SATURATE"] = 1000.0 + "grz".index(band)
            out.append(hdu)
        return out

    hdus("zgr", named=True).writeto(tmp_path / "named.fits")
    named = read_fits(tmp_path / "named.fits", DecodeConfig())
    np.testing.assert_array_equal(named.data, cube)
    assert named.saturation == [1000.0, 1001.0, 1002.0]  # each band keeps its own level
    named_zrg = read_fits(tmp_path / "named.fits", DecodeConfig(), band_order="zrg")
    np.testing.assert_array_equal(named_zrg.data, cube)  # the cards decide, not the setting
    hdus("grz", named=False).writeto(tmp_path / "plain.fits")
    np.testing.assert_array_equal(read_fits(tmp_path / "plain.fits", DecodeConfig()).data, cube)
    one = read_fits(tmp_path / "plain.fits", DecodeConfig(fits=FitsConfig(hdu=2)))
    np.testing.assert_array_equal(one.data, cube[1:2])  # an explicit HDU is one band
    two = fits.HDUList([fits.PrimaryHDU(cube[0]), fits.ImageHDU(cube[1])])
    two.writeto(tmp_path / "two.fits")
    np.testing.assert_array_equal(read_fits(tmp_path / "two.fits", DecodeConfig()).data, cube[:1])


def test_bands_of_different_sizes_or_planes_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.fits", fits.PrimaryHDU(np.zeros((10, 10), np.float32)))
    b = write(tmp_path / "b.fits", fits.PrimaryHDU(np.zeros((10, 12), np.float32)))
    with pytest.raises(DecodeError, match="first band"):
        read_fits_bands([a, a, b], DecodeConfig())
    four = write(tmp_path / "four.fits", fits.PrimaryHDU(np.zeros((4, 10, 10), np.float32)))
    with pytest.raises(DecodeError) as err:
        read_fits(four, DecodeConfig())
    assert err.value.reason == "unsupported"


def test_the_image_may_sit_in_an_extension_and_bytes_read_like_files(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)]).writeto(path)
    np.testing.assert_array_equal(read_fits(path, DecodeConfig()).data[0], data)
    from_bytes = read_fits(path.read_bytes(), DecodeConfig())
    np.testing.assert_array_equal(from_bytes.data[0], data)


def test_a_file_over_the_byte_limit_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path / "big.fits", fits.PrimaryHDU(np.zeros((100, 100), np.float32)))
    with pytest.raises(DecodeError) as err:
        read_field(path, DecodeConfig(), FieldsConfig(max_file_bytes=2880 * 3))
    assert err.value.reason == "oversized"


def test_tile_compressed_fits_reads_and_a_cut_one_is_corrupt(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(1000, 10, (300, 400)).astype(np.float32)
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(path)
    raw = read_fits(path, DecodeConfig())
    np.testing.assert_allclose(raw.data[0], data, atol=1.0)  # float tiles are quantised
    with pytest.raises(DecodeError) as err:
        read_fits(path.read_bytes()[:-2880], DecodeConfig())
    assert err.value.reason == "corrupt"
    with pytest.raises(DecodeError) as err:
        read_fits(path, DecodeConfig(max_pixels=100_000))  # the image's size, not the tiles'
    assert err.value.reason == "oversized"
