"""Fixtures of the wide-field tests: real galaxies, synthetic fields, the demo model's bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from field_testkit import Galaxy, load_galaxies

from edge_agent.fields.synthetic import SyntheticField, make_field

ROOT = Path(__file__).resolve().parents[3]
FIELD_SHAPE = (2048, 2048)


@pytest.fixture(scope="session")
def galaxies() -> list[Galaxy]:
    """40 real Galaxy10 galaxies, four of each class."""
    return load_galaxies(40, offset=3)


@pytest.fixture(scope="session")
def field3(galaxies: list[Galaxy]) -> SyntheticField:
    """Three bands, Moffat stars: the first 20 galaxies."""
    return make_field(
        [g.rgb for g in galaxies[::2]],
        shape=FIELD_SHAPE,
        n_stars=200,
        bands=3,
        psf="moffat",
        noise=40.0,
        seed=1,
    )


@pytest.fixture(scope="session")
def field1(galaxies: list[Galaxy]) -> SyntheticField:
    """One band, Gaussian stars: the other 20 galaxies."""
    return make_field(
        [g.rgb for g in galaxies[1::2]],
        shape=FIELD_SHAPE,
        n_stars=200,
        bands=1,
        psf="gaussian",
        fwhm=3.0,
        noise=40.0,
        seed=2,
    )


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX Runtime bundle of the shipped demo model, built by build-engine (~15 s)."""
    out = tmp_path_factory.mktemp("demo-bundle") / "bundle"
    cmd = [
        sys.executable,
        "-m",
        "build_engine.cli",
        "--checkpoint",
        str(ROOT / "models" / "demo"),
        "--out",
        str(out),
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return out
