"""Settings of the wide-field path (``fields:`` in the agent's config).

Defaults come from measurements, recorded in docs/wide-fields.md:

- ``framing_r50``: on the 973 galaxies of the real Galaxy10 sample that this detection finds at
  the centre of their cut-out (of 998), the 256-pixel side is a median 22.2 times the galaxy's
  half-light radius (10th-90th percentile 12.1-38.6: Galaxy10 frames its galaxies loosely; the
  isophotal axis and a Petrosian radius spread as much).
- ``reference_p99``: the 99th percentile of the survey-weighted intensity of those cut-outs,
  sky subtracted, recovered by inverting the survey's colour composition: median 0.27
  (10th-90th percentile 0.12-0.64, same 973 galaxies). The automatic flux scale aims for it.
- ``background_box_px``: 128, not Source Extractor's usual 64: Galaxy10 galaxies span up to
  ~200 pixels, and a finer mesh takes their outskirts for sky.
- ``min_snr``: on those frames the noise peaks that pass the size cuts have a signal-to-noise
  ratio of 15 (median) to 65 (90th percentile); the faintest pasted Galaxy10 galaxy has 636.
- ``star_r50_factor``, ``sharp_r50_factor``, ``min_axis_ratio``: chosen on the synthetic frames
  of tests/edge_agent/fields (stars with Gaussian and Moffat PSFs against real galaxies).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FieldsBandOrder = Literal["grz", "zrg", "single"]


class FieldsConfig(BaseModel):
    """How a wide field becomes galaxy cut-outs (sources whose ``mode`` is ``fields``)."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(
        512 * 1024 * 1024,
        ge=2880,
        description="a wide-field FITS file larger than this is refused unread (oversized)",
    )
    detect_sigma: float = Field(
        1.5, gt=0, le=100, description="detection threshold, in background RMS per pixel"
    )
    min_area_px: int = Field(5, ge=1, le=10_000, description="a source covers at least this")
    deblend_contrast: float = Field(
        0.05,
        gt=0,
        le=1,
        description="sep deblend_cont: higher keeps a spiral's knots in one source",
    )
    background_box_px: int = Field(
        128, ge=8, le=4096, description="mesh size of the background estimate"
    )
    max_sources: int = Field(
        20_000, ge=1, le=1_000_000, description="more detections than this: the frame is refused"
    )
    max_pixstack: int = Field(
        20_000_000,
        ge=300_000,
        le=200_000_000,
        description="ceiling of sep's pixel buffer (memory: about 40 bytes per pixel)",
    )
    max_cutouts: int = Field(
        256, ge=1, le=100_000, description="galaxies classified per frame, brightest first"
    )
    psf_r50_px: float | None = Field(
        None, gt=0, description="PSF half-light radius; default: measured on the frame's stars"
    )
    psf_fallback_r50_px: float = Field(
        2.0, gt=0, description="PSF half-light radius when the frame has too few bright stars"
    )
    psf_min_snr: float = Field(20.0, gt=0, description="sources used to measure the PSF")
    star_r50_factor: float = Field(
        1.6, gt=0, description="half-light radius under this times the PSF's: a star"
    )
    sharp_r50_factor: float = Field(
        0.6,
        gt=0,
        description="sharper than this times the PSF: an artefact (cosmic ray, hot pixel)",
    )
    min_axis_ratio: float = Field(
        0.12, ge=0, le=1, description="b/a under this: an artefact (satellite trail, bad column)"
    )
    min_snr: float = Field(
        100.0, ge=0, description="isophotal signal-to-noise under this: too faint to classify"
    )
    reject_edge: bool = Field(True, description="drop sources cut by the frame's edge")
    saturation: float | None = Field(
        None, description="saturation level; default: SATURATE/DATAMAX or the integer type's top"
    )
    framing_r50: float = Field(
        22.2, gt=1, le=1000, description="cut-out side as a multiple of the half-light radius"
    )
    min_side_px: int = Field(48, ge=8, le=8192, description="smallest cut-out side (frame px)")
    max_side_px: int = Field(1024, ge=8, le=8192, description="largest cut-out side (frame px)")
    band_order: FieldsBandOrder = Field(
        "grz", description="planes of a three-plane frame: grz (the survey's cubes) or zrg"
    )
    flux_scale: float | None = Field(
        None,
        gt=0,
        description="frame units to nanomaggies; default: the header's zero point, else the galaxies'",
    )
    reference_p99: float = Field(
        0.27,
        gt=0,
        description="p99 of a Galaxy10 cut-out's weighted intensity (the automatic flux scale)",
    )

    @model_validator(mode="after")
    def _sides(self) -> FieldsConfig:
        if self.min_side_px > self.max_side_px:
            raise ValueError("min_side_px must not exceed max_side_px")
        if self.sharp_r50_factor >= self.star_r50_factor:
            raise ValueError("sharp_r50_factor must be below star_r50_factor")
        return self
