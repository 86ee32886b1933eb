"""The survey's colour composition round-trips, and cut-outs are framed and padded as stated."""

from __future__ import annotations

import numpy as np
from field_testkit import Galaxy

from edge_agent.fields.colour import compose_rgb, invert_rgb, zero_point_scale
from edge_agent.fields.cutout import cut, cutout_image, cutout_side
from edge_agent.fields.settings import FieldsConfig


def test_composition_inverts_the_survey_images(galaxies: list[Galaxy]) -> None:
    for g in galaxies[:10]:
        back = compose_rgb(invert_rgb(g.rgb), 1.0)
        diff = np.abs(back.astype(int) - g.rgb.astype(int))
        assert np.percentile(diff, 99) <= 1, g.file


def test_zero_flux_is_the_survey_sky_grey_and_one_band_is_grey() -> None:
    rgb = compose_rgb(np.zeros((3, 4, 4), np.float32), 1.0)
    assert (rgb == 32).all()  # what the real Galaxy10 images show for empty sky
    one = compose_rgb(np.full((1, 4, 4), 0.05, np.float32), 1.0)
    assert (one[..., 0] == one[..., 1]).all() and (one[..., 1] == one[..., 2]).all()


def test_zero_point_scale() -> None:
    assert zero_point_scale({"PHOTZP": 22.5}) == 1.0
    assert zero_point_scale({"MAGZP": 25.0}) == 10 ** (-1.0)
    assert zero_point_scale({}) is None


def test_sides_follow_the_galaxy_within_bounds() -> None:
    s = FieldsConfig()
    assert cutout_side(10.0, s) == round(10.0 * s.framing_r50)
    assert cutout_side(0.1, s) == s.min_side_px and cutout_side(1e4, s) == s.max_side_px


def test_cut_pads_outside_the_frame_with_zero_flux_and_flips_to_image_order() -> None:
    bands = np.arange(100, dtype=np.float32).reshape(1, 10, 10) + 1
    stamp = cut(bands, 0.0, 0.0, 4)  # centred on the corner pixel: 3/4 of it is outside
    assert (
        stamp.shape == (1, 4, 4) and (stamp[0, :1, :] == 0).all() and (stamp[0, :, :1] == 0).all()
    )
    assert stamp[0, 1, 1] == bands[0, 0, 0]
    frame = np.zeros((1, 64, 64), np.float32)
    frame[0, 40, 32] = 5.0  # above the centre in FITS order (row 0 at the bottom)
    image = cutout_image(frame, 32.0, 32.0, 64, 1.0, 64)
    row, col = np.unravel_index(int(image[..., 1].argmax()), image.shape[:2])
    assert image.shape == (64, 64, 3) and (row, col) == (63 - 39, 31)  # upper half, as shown
