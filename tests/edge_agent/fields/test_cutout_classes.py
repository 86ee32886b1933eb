"""A galaxy cut out of a wide field gets the class its original Galaxy10 cut-out gets.

Both go through the demo model's ONNX Runtime bundle (built by build-engine from models/demo).
The cut-out is framed from the galaxy's own size (Galaxy10's framing ratio, measured on the real
sample, varies 10-36 x r50 between galaxies) and composed from linear flux with sky noise added,
so it is never the original's pixels. "Most galaxies" is the bar; the agreement is printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from field_testkit import Galaxy, nearest

from edge_agent.backends.factory import create_backend
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.manifest import load_bundle
from edge_agent.contract.preprocess import preprocess_batch
from edge_agent.fields.process import process_field
from edge_agent.fields.raw import read_fits
from edge_agent.fields.settings import FieldsConfig
from edge_agent.fields.synthetic import ADU_PER_FLUX, SyntheticField, write_fits

pytestmark = pytest.mark.slow  # seconds per frame on a shared CPU


def predict(bundle: Path, images: list[np.ndarray]) -> np.ndarray:
    manifest = load_bundle(bundle)
    backend = create_backend(bundle, manifest)
    try:
        logits = [
            backend.infer(preprocess_batch(images[i : i + 8], manifest.preprocess))
            for i in range(0, len(images), 8)
        ]
    finally:
        backend.close()
    return np.concatenate(logits).argmax(axis=1)


def agreement(
    field: SyntheticField, galaxies: list[Galaxy], bundle: Path, path: Path, **extra: float
) -> tuple[float, int]:
    header = {"PHOTZP": extra["zp"]} if "zp" in extra else None
    write_fits(field, path, "float32", header_extra=header)
    out = process_field(read_fits(path, DecodeConfig()), FieldsConfig(), 256)
    pairs = []
    for g, (x, y) in zip(galaxies, field.galaxies, strict=True):
        cut, dist = nearest(out.cutouts, x, y)
        if cut is not None and dist <= 3.0:
            pairs.append((g.rgb, cut.image))
    original = predict(bundle, [a for a, _ in pairs])
    cutout = predict(bundle, [b for _, b in pairs])
    return float(np.mean(original == cutout)), len(pairs)


def test_cutouts_get_the_class_of_their_original_for_most_galaxies(
    field3: SyntheticField, galaxies: list[Galaxy], demo_bundle: Path, tmp_path: Path
) -> None:
    pasted = galaxies[::2]
    auto, n = agreement(field3, pasted, demo_bundle, tmp_path / "auto.fits")
    zp = 22.5 + 2.5 * np.log10(ADU_PER_FLUX)  # the frame says how its units relate to the survey's
    calibrated, _ = agreement(field3, pasted, demo_bundle, tmp_path / "zp.fits", zp=zp)
    print(
        f"class agreement on {n} galaxies, 3 bands: {auto:.2f} (flux scale from the galaxies), "
        f"{calibrated:.2f} (from the header's zero point)"
    )
    assert n >= 19
    assert auto > 0.5 and calibrated > 0.5


def test_one_band_agreement_is_measured(
    field1: SyntheticField, galaxies: list[Galaxy], demo_bundle: Path, tmp_path: Path
) -> None:
    """One band is shown grey; the model was trained on colour, so this is stated, not required."""
    grey, n = agreement(field1, galaxies[1::2], demo_bundle, tmp_path / "grey.fits")
    print(f"class agreement on {n} galaxies, 1 band (grey) vs the colour originals: {grey:.2f}")
    assert n >= 19 and 0.0 <= grey <= 1.0
