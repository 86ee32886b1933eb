"""How image files become pixels: the decoding settings every stage shares.

The agent reads them from its config (``decode:``); training, calibration, the accuracy gate and
``evaluate`` use the same model (defaults unless a run says otherwise), so every stage sees the
same pixels for the same file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ImageFormat = Literal["png", "jpeg", "tiff", "bmp", "webp", "npy", "fits"]
ALL_FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "tiff", "bmp", "webp", "npy", "fits")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StretchConfig(_Strict):
    """How 16-bit and float FITS/TIFF/NPY data become 8 bits.

    ``linear`` maps [low, high] percentiles to [0, 255]; ``asinh`` does the same after
    ``asinh(x / a) / asinh(1 / a)`` on the normalised value (brings out faint structure);
    ``percentile`` is the z-scale-like clip (same as linear, named for its use).
    """

    method: Literal["linear", "asinh", "percentile"] = Field(
        "asinh", description="how deep values map to 0..255 (see the class description)"
    )
    low_percentile: float = Field(
        0.5, ge=0.0, lt=100.0, description="percentile of the finite values that becomes 0"
    )
    high_percentile: float = Field(
        99.5, gt=0.0, le=100.0, description="percentile of the finite values that becomes 255"
    )
    asinh_a: float = Field(0.1, gt=0.0, le=10.0, description="asinh softening")

    @model_validator(mode="after")
    def _ordered(self) -> StretchConfig:
        if self.low_percentile >= self.high_percentile:
            raise ValueError("low_percentile must be below high_percentile")
        return self


class FitsConfig(_Strict):
    """Which part of a FITS file is the image."""

    hdu: int | None = Field(None, ge=0, description="default: the first HDU holding an image")
    bands: list[int] | None = Field(
        None, description="plane indices of a 3-D cube: 1 (grey) or 3 (R, G, B)"
    )

    @model_validator(mode="after")
    def _band_count(self) -> FitsConfig:
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise ValueError("bands must list 1 or 3 plane indices")
        return self


class DecodeConfig(_Strict):
    """Limits checked before decoding, and how deep data becomes 8 bits.

    The three limits bound what one input can cost: ``max_bytes`` is read, and the image its
    header promises must fit ``max_pixels`` and ``max_decoded_bytes`` before any decoder runs.
    """

    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest encoded file or message, in bytes"
    )
    max_pixels: int = Field(
        50_000_000, ge=64, description="largest image (width x height) a header may claim"
    )
    max_decoded_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description=(
            "largest decoded array a header may promise, in bytes (width x height x bands x "
            "bytes per sample, plus the decoder's own whole-image buffers), refused before "
            "decoding; decoding a file at this limit peaks at about 4 times it (RGB output, "
            "float32 stretch of deep data)"
        ),
    )
    stretch: StretchConfig = Field(
        default_factory=StretchConfig, description="16-bit and float data to 8 bits"
    )
    fits: FitsConfig = Field(default_factory=FitsConfig, description="FITS HDU and bands")
