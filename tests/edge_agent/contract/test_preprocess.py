import cv2
import numpy as np
import pytest

from edge_agent.contract.errors import PreprocessError
from edge_agent.contract.preprocess import (
    DEFAULT_SPEC,
    PreprocessSpec,
    crop_box,
    normalise_identity,
    preprocess_batch,
    preprocess_frame,
    resample_frame,
    sample_grid,
    to_rgb3,
)


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_model_sized_frame_is_only_normalised() -> None:
    f = _frame(256, 256)
    out = preprocess_frame(f)
    expected = f.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    assert out.shape == (3, 256, 256) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_bgr_frames_are_swapped_to_rgb() -> None:
    f = _frame(100, 120)
    np.testing.assert_array_equal(
        preprocess_frame(f[:, :, ::-1].copy(), frame_order="BGR"), preprocess_frame(f)
    )


def test_center_square_crop_uses_integer_offsets() -> None:
    assert crop_box(300, 411, DEFAULT_SPEC) == (55, 0, 300, 300)
    assert crop_box(7, 4, DEFAULT_SPEC) == (0, 1, 4, 4)
    assert crop_box(7, 4, PreprocessSpec(crop="none")) == (0, 0, 4, 7)


def test_crop_ignores_pixels_outside_the_square() -> None:
    f = _frame(256, 400)
    g = f.copy()
    g[:, :72] = 0  # left margin, outside the centred 256 square starting at x = 72
    g[:, 72 + 256 :] = 255
    np.testing.assert_array_equal(preprocess_frame(f), preprocess_frame(g))


def test_upscaling_matches_opencv_bilinear_half_pixel() -> None:
    # OpenCV's INTER_LINEAR uses the same half-pixel rule (with fixed-point weights on uint8,
    # so compare in float32 input where it is exact float arithmetic).
    f = _frame(64, 64).astype(np.float32)
    ours = preprocess_frame(f.astype(np.uint8), PreprocessSpec(scale=1.0, offset=0.0))
    theirs = cv2.resize(f, (256, 256), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_sample_grid_clamps_and_stays_in_range() -> None:
    lo, hi, frac = sample_grid(5, 256)
    assert lo.min() == 0 and hi.max() == 4
    assert (frac >= 0).all() and (frac < 1).all()
    lo, hi, frac = sample_grid(1, 256)
    assert (lo == 0).all() and (hi == 0).all()


@pytest.mark.parametrize(("h", "w"), [(1, 1), (7, 13), (255, 257), (1023, 777)])
def test_odd_sizes_give_model_shaped_finite_output(h: int, w: int) -> None:
    out = preprocess_frame(_frame(h, w))
    assert out.shape == (3, 256, 256)
    assert np.isfinite(out).all()
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6


def test_constant_frame_stays_constant_after_resize() -> None:
    f = np.full((97, 131, 3), 200, dtype=np.uint8)
    np.testing.assert_allclose(preprocess_frame(f), 200 / 127.5 - 1.0, atol=1e-6)


def test_batch_equals_frames_and_casts() -> None:
    frames = [_frame(256, 256, 1), _frame(300, 200, 2)]
    batch = preprocess_batch(frames)
    assert batch.shape == (2, 3, 256, 256)
    np.testing.assert_array_equal(batch[1], preprocess_frame(frames[1]))
    half = preprocess_batch(frames, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, batch, atol=1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
)
def test_bad_frames_raise(bad: np.ndarray) -> None:
    with pytest.raises(PreprocessError):
        preprocess_frame(bad)


def test_empty_batch_raises() -> None:
    with pytest.raises(PreprocessError, match="empty"):
        preprocess_batch([])


def test_grey_frames_are_replicated() -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb3(g)
    assert rgb.shape == (3, 4, 3)
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_spec_is_strict() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec.model_validate({"input_size": 256, "resize": "area"})


@pytest.mark.parametrize(
    ("spec", "order"),
    [
        (DEFAULT_SPEC, "RGB"),
        (DEFAULT_SPEC, "BGR"),
        (PreprocessSpec(input_size=64, scale=1 / 255, offset=0.0, crop="none"), "RGB"),
    ],
)
def test_identity_fast_path_is_bit_identical_to_the_resample(
    spec: PreprocessSpec, order: str
) -> None:
    f = _frame(spec.input_size, spec.input_size, 7)
    fast = normalise_identity(f, spec, order)  # type: ignore[arg-type]
    slow = resample_frame(f, spec, order)  # type: ignore[arg-type]
    assert fast.dtype == np.float32 and fast.tobytes() == slow.tobytes()
    assert preprocess_frame(f, spec, order).tobytes() == slow.tobytes()  # type: ignore[arg-type]
