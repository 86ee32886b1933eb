"""The inference preprocessing contract and its CPU reference implementation.

One deterministic transform turns a decoded frame (uint8, H x W x 3, any size) into the model
input (float, 3 x S x S, values ``x * scale + offset``, by default ``x / 127.5 - 1``):

1. Crop: ``center_square`` takes the largest centred square, its corner at
   ``((w - side) // 2, (h - side) // 2)`` with ``side = min(h, w)`` (integer division, so every
   implementation picks the same pixels); ``none`` keeps the whole frame (and stretches it).
2. Resize the crop to S x S, bilinear with half-pixel centres and no antialiasing: output pixel
   ``o`` samples the crop at ``(o + 0.5) * (n_in / S) - 0.5``, clamped to ``[0, n_in - 1]``;
   neighbours are ``floor`` and ``min(floor + 1, n_in - 1)``; weights computed in float32.
   A frame that is already S x S passes through unchanged.
3. Normalise ``y = v * scale + offset`` in float32 and lay the channels out as NCHW in the
   model's channel order (RGB).

The spec travels in the bundle manifest and is read by every implementation: this NumPy
reference, the fused CUDA kernel of ``build_engine`` and the training eval transform. The CUDA
kernel mirrors :func:`sample_grid` exactly; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.contract.errors import PreprocessError

ChannelOrder = Literal["RGB", "BGR"]


class PreprocessSpec(BaseModel):
    """Everything an implementation needs to reproduce the inference transform."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(256, ge=8, le=4096, description="S: the model sees S x S pixels")
    crop: Literal["center_square", "none"] = Field(
        "center_square", description="how a non-square frame is made square before resizing"
    )
    interpolation: Literal["bilinear"] = Field(
        "bilinear", description="half-pixel centres, edge clamp, no antialiasing"
    )
    channel_order: Literal["RGB"] = Field("RGB", description="channel order the model expects")
    scale: float = Field(1.0 / 127.5, description="y = x * scale + offset")
    offset: float = Field(-1.0, description="y = x * scale + offset")
    layout: Literal["NCHW"] = "NCHW"


DEFAULT_SPEC = PreprocessSpec()


def crop_box(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """``(x0, y0, crop_w, crop_h)`` of the region of a ``height x width`` frame that is resized."""
    if height < 1 or width < 1:
        raise PreprocessError(f"frame of {height}x{width} pixels has no area")
    if spec.crop == "none":
        return 0, 0, width, height
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side, side


def sample_grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling along one axis: low index, high index and weight of the high one.

    Indices are relative to the start of the crop. float32 throughout, as in the CUDA kernel.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    pos = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    pos = np.clip(pos, np.float32(0.0), np.float32(n_in - 1))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, frac


def check_frame(frame: np.ndarray) -> None:
    """Raise :class:`PreprocessError` unless ``frame`` is a uint8 H x W x 3 array."""
    if not isinstance(frame, np.ndarray):
        raise PreprocessError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise PreprocessError(f"frame must be uint8, got {frame.dtype}; decode to 8 bits first")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise PreprocessError(
            f"frame must be H x W x 3, got shape {frame.shape}; convert grey frames with to_rgb3"
        )
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise PreprocessError(f"frame of shape {frame.shape} has no pixels")


def to_rgb3(frame: np.ndarray) -> np.ndarray:
    """Grey (H x W or H x W x 1) to H x W x 3 by repeating the band; 3-band frames unchanged."""
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    return frame


def preprocess_frame(
    frame: np.ndarray,
    spec: PreprocessSpec = DEFAULT_SPEC,
    frame_order: ChannelOrder = "RGB",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One frame (uint8 H x W x 3 in ``frame_order``) to a float32 3 x S x S model input."""
    check_frame(frame)
    s = spec.input_size
    if frame.shape[0] == s and frame.shape[1] == s:
        chw = normalise_identity(frame, spec, frame_order)
    else:
        chw = resample_frame(frame, spec, frame_order)
    if out is not None:
        out[...] = chw
        return out
    return chw


def normalise_identity(
    frame: np.ndarray, spec: PreprocessSpec, frame_order: ChannelOrder = "RGB"
) -> np.ndarray:
    """The transform of a frame that is already S x S, in one pass.

    Every output pixel then samples its own centre (weights exactly 0 and 1), so the resample
    reduces to ``x * scale + offset`` in float32: the same two float32 operations as
    :func:`resample_frame`, hence the same bits (a test checks it), at a tenth of the cost.
    """
    src = frame[:, :, ::-1] if frame_order == "BGR" else frame
    chw = np.empty((3, *frame.shape[:2]), dtype=np.float32)
    np.multiply(src.transpose(2, 0, 1), np.float32(spec.scale), out=chw)
    chw += np.float32(spec.offset)
    return chw


def resample_frame(
    frame: np.ndarray, spec: PreprocessSpec, frame_order: ChannelOrder = "RGB"
) -> np.ndarray:
    """The general path of :func:`preprocess_frame`: crop, bilinear resize, normalise."""
    h, w = frame.shape[:2]
    x0, y0, cw, ch = crop_box(h, w, spec)
    s = spec.input_size
    ylo, yhi, fy = sample_grid(ch, s)
    xlo, xhi, fx = sample_grid(cw, s)
    crop = frame[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32)
    if frame_order == "BGR":
        crop = crop[:, :, ::-1]
    top = crop[ylo]  # S x cw x 3
    bottom = crop[yhi]
    fx3 = fx[None, :, None]
    fy3 = fy[:, None, None]
    one = np.float32(1.0)
    row_top = top[:, xlo] * (one - fx3) + top[:, xhi] * fx3
    row_bottom = bottom[:, xlo] * (one - fx3) + bottom[:, xhi] * fx3
    value = row_top * (one - fy3) + row_bottom * fy3
    result = value * np.float32(spec.scale) + np.float32(spec.offset)
    return np.ascontiguousarray(result.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(
    frames: Sequence[np.ndarray],
    spec: PreprocessSpec = DEFAULT_SPEC,
    frame_order: ChannelOrder = "RGB",
    dtype: type[np.floating] = np.float32,
) -> np.ndarray:
    """Frames of any sizes to one N x 3 x S x S array of ``dtype`` (float32 or float16)."""
    if len(frames) == 0:
        raise PreprocessError("cannot preprocess an empty batch")
    s = spec.input_size
    batch = np.empty((len(frames), 3, s, s), dtype=np.float32)
    for i, frame in enumerate(frames):
        preprocess_frame(frame, spec, frame_order, out=batch[i])
    return batch if dtype is np.float32 else batch.astype(dtype)
