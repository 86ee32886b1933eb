"""``edge-agent classify``: files to the agent's payloads as JSON Lines, valid against the schemas."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from edge_agent.cli import main
from edge_agent.fields.synthetic import make_field, model_galaxy, write_fits
from edge_agent.schemas import closed_schema, load_schema

ROOT = Path(__file__).resolve().parents[2]


def validate(body: dict) -> None:
    kind = body["type"]
    check = Draft202012Validator(
        closed_schema(load_schema(kind)), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(body))
    assert not errors, (kind, errors)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict], str]:
    code = main(["classify", *argv])
    out, err = capsys.readouterr()
    bodies = [json.loads(line) for line in out.splitlines()]
    for body in bodies:
        validate(body)
    return code, bodies, err


@pytest.fixture(scope="module")
def wide_field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    galaxies = [model_galaxy(r_e=8 + 3 * i, angle_deg=40 * i) for i in range(4)]
    field = make_field(galaxies, shape=(1024, 1024), n_stars=60, bands=3, noise=20.0, seed=7)
    return write_fits(field, tmp_path_factory.mktemp("wide") / "wide.fits", "float32")


def test_stamps_give_one_classification_each(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "g.png"
    cv2.imwrite(str(png), model_galaxy()[:, :, ::-1])
    code, bodies, err = run(["--bundle", str(tiny_bundle), str(png)], capsys)
    assert code == 0 and [b["type"] for b in bodies] == ["classification"]
    assert bodies[0]["frame_ref"] == f"{png.resolve()}@{png.stat().st_mtime_ns}"
    assert "cutout" not in bodies[0] and "[1/1]" in err


def test_wide_fields_give_a_summary_and_a_classification_per_galaxy(
    tiny_bundle: Path, wide_field: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, bodies, err = run(["--bundle", str(tiny_bundle), "--sources", str(wide_field)], capsys)
    assert code == 0
    summary, *rest = bodies
    assert summary["type"] == "frame_summary" and summary["sky"] == "wcs"
    cutouts = [b for b in rest if b["type"] == "classification"]
    assert len(cutouts) == summary["galaxies_classified"] >= 4
    assert summary["rejected"]["star"] >= 50
    assert len({b["id"] for b in cutouts}) == len(cutouts)  # the index is in the id
    assert all(b["frame_ref"] == summary["frame_ref"] for b in cutouts)
    assert all(b["cutout"]["ra"] is not None and not b["cutout"]["approximate"] for b in cutouts)
    assert "galaxies kept" in err


def test_three_band_files_of_one_exposure(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    field = make_field([model_galaxy()], shape=(512, 512), n_stars=20, bands=3, seed=8)
    paths = []
    for i, band in enumerate("grz"):
        one = type(field)(field.data[i : i + 1], field.header, field.galaxies, field.stars)
        paths.append(str(write_fits(one, tmp_path / f"{band}.fits", "uint16")))
    code, bodies, _ = run(["--bundle", str(tiny_bundle), "--bands", *paths], capsys)
    assert code == 0 and bodies[0]["type"] == "frame_summary" and bodies[0]["bands"] == 3
    assert any(b["type"] == "classification" for b in bodies)


def test_the_config_mode_and_settings_apply(
    tiny_bundle: Path, wide_field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"device_id: archive-1\nbundle: {tiny_bundle}\n"
        "sources: [{uri: 'dir:///data', mode: fields}]\nfields: {max_cutouts: 2}\n"
    )
    code, bodies, _ = run(
        ["--bundle", str(tiny_bundle), "--config", str(config), str(wide_field)], capsys
    )
    assert code == 0 and bodies[0]["device_id"] == "archive-1"
    assert bodies[0]["galaxies_classified"] == 2
    assert [b["reason"] for b in bodies if b["type"] == "error"] == ["too_many_sources"]


def test_bad_files_give_errors_and_exit_1_the_rest_still_classified(
    tiny_bundle: Path, wide_field: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    code, bodies, err = run(
        ["--bundle", str(tiny_bundle), "--sources", str(bad), str(wide_field)], capsys
    )
    assert code == 1
    assert bodies[0]["type"] == "error" and bodies[0]["reason"] == "truncated"
    assert bodies[0]["quarantined_to"] is None
    assert bodies[1]["type"] == "frame_summary"
    assert "1 of 2 inputs processed" in err


def test_usage_and_bundle_mistakes_have_their_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["classify", "--bundle", str(tmp_path), str(tmp_path / "missing.fits")]) == 2
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    assert main(["classify", "--bundle", str(tmp_path / "nobundle"), str(png)]) == 4
    capsys.readouterr()
