"""How image files become pixels: the decoding settings every stage shares.

Two kinds of setting, kept apart:

- :class:`DecodeSpec` (the stretch of deep data, the FITS HDU and bands) decides WHICH pixels a
  file gives: it is part of the model's contract and travels with it like the preprocessing
  spec (training config -> checkpoint -> ONNX metadata ``galaxy_edge.decode`` -> bundle
  manifest ``decode``). Training, calibration, the accuracy gate, ``evaluate`` and the agent all
  decode with the model's spec.
- :class:`DecodeLimits` (``max_bytes``, ``max_pixels``, ``max_decoded_bytes``) bound what one
  input may cost on a host; they never change a pixel and stay local to each host.

:class:`DecodeConfig` is what the decoder takes: both together. The agent's ``decode:`` config
section is a :class:`DecodeSettings`: the host's limits, and optionally ``stretch``/``fits`` as
an assertion of what the bundle must hold (:meth:`DecodeSettings.resolve` refuses a mismatch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.contract.errors import GalaxyEdgeError

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


class DecodeSpec(_Strict):
    """Which pixels a file gives where the decoder has a choice: the model's contract.

    Recorded by ``galaxy-train`` and carried to the bundle manifest; a bundle or ONNX file
    without it was made before it travelled, when every stage used these defaults.
    """

    stretch: StretchConfig = Field(
        default_factory=StretchConfig, description="16-bit and float data to 8 bits"
    )
    fits: FitsConfig = Field(default_factory=FitsConfig, description="FITS HDU and bands")

    def decoder(self, limits: DecodeLimits | None = None) -> DecodeConfig:
        """The decoder's settings: this spec within ``limits`` (default: the default limits)."""
        bounds = (limits or DecodeLimits()).model_dump(include=set(DecodeLimits.model_fields))
        return DecodeConfig(**bounds, stretch=self.stretch, fits=self.fits)


DEFAULT_DECODE = DecodeSpec()


class DecodeLimits(_Strict):
    """Limits checked before decoding: what one input may cost on this host.

    The three limits bound what one input can cost: ``max_bytes`` is read, and the image its
    header promises must fit ``max_pixels`` and ``max_decoded_bytes`` before any decoder runs.
    They never change a pixel, so they are a host's own setting and do not travel with a model.
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


class DecodeConfig(DecodeLimits):
    """What the decoder takes: a host's limits and a model's :class:`DecodeSpec`."""

    stretch: StretchConfig = Field(
        default_factory=StretchConfig, description="16-bit and float data to 8 bits"
    )
    fits: FitsConfig = Field(default_factory=FitsConfig, description="FITS HDU and bands")

    @property
    def spec(self) -> DecodeSpec:
        """The pixel-deciding part of these settings."""
        return DecodeSpec(stretch=self.stretch, fits=self.fits)


class DecodeSpecMismatch(GalaxyEdgeError):
    """A config states decode settings that differ from those the model was trained with."""


class DecodeSettings(DecodeLimits):
    """The agent config's ``decode:`` section: this host's limits; the pixels follow the bundle.

    ``stretch`` and ``fits`` are optional: left out, the agent decodes with the bundle's
    :class:`DecodeSpec` (the one its model was trained with). Given, they must equal the
    bundle's, or the agent refuses to start: a frame stretched otherwise is another image.
    """

    stretch: StretchConfig | None = Field(
        None,
        description="16-bit and float data to 8 bits; leave out to follow the bundle (which "
        "records what its model was trained with); given, it must match the bundle's",
    )
    fits: FitsConfig | None = Field(
        None,
        description="FITS HDU and bands; leave out to follow the bundle; given, it must match",
    )

    def resolve(self, spec: DecodeSpec, origin: str = "the bundle") -> DecodeConfig:
        """The decoder's settings for a model trained with ``spec``.

        Raises :class:`DecodeSpecMismatch` (one line: which setting differs and what to do)
        when ``stretch`` or ``fits`` is set here and differs from ``spec``.
        """
        for name, mine, theirs in (
            ("stretch", self.stretch, spec.stretch),
            ("fits", self.fits, spec.fits),
        ):
            if mine is None or mine == theirs:
                continue
            ours, model = mine.model_dump(), theirs.model_dump()
            diffs = ", ".join(
                f"decode.{name}.{key} is {ours[key]!r} in the agent config but {model[key]!r} "
                f"in {origin}"
                for key in ours
                if ours[key] != model[key]
            )
            raise DecodeSpecMismatch(
                f"{diffs}, which its model was trained with; remove decode.{name} from the "
                "agent config to decode as the bundle says, or deploy a model trained with these "
                "settings (galaxy-train train --decode-spec)"
            )
        limits = self.model_dump(include=set(DecodeLimits.model_fields))
        return DecodeConfig(**limits, stretch=spec.stretch, fits=spec.fits)
