"""Accuracy under survey shift: each condition does what it says, and the report reads real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_testkit import tiny_config_values

from training.cli import main
from training.crossval import Variant, run_crossval
from training.errors import UsageError
from training.shift_eval import (
    CONDITIONS,
    Condition,
    apply_condition,
    by_name,
    mcnemar,
    run_shift,
    run_single,
)

RANGE = (-1.0, 1.0)


def _disc(side: int = 64, radius: float = 8.0, level: float = 0.8) -> torch.Tensor:
    """A 1 x 3 x side x side model-input batch: a flat disc of ``level`` (unit share) on black."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    inside = ((yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2) < radius**2
    unit = (inside.float() * level).expand(1, 3, side, side).clone()
    return unit * 2.0 - 1.0


def _unit(batch: torch.Tensor) -> torch.Tensor:
    return (batch + 1.0) / 2.0


def _second_moment(image: torch.Tensor) -> float:
    side = image.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    w = image / image.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    return float((w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum())


def test_clean_is_the_identity_and_flux_scales_every_band() -> None:
    batch = _disc()
    assert apply_condition(batch, by_name(["clean"])[0], RANGE) is batch
    fainter = apply_condition(batch, by_name(["fainter"])[0], RANGE)
    torch.testing.assert_close(_unit(fainter), _unit(batch) * 0.6)
    colour = apply_condition(batch, by_name(["colour"])[0], RANGE)
    peak = _unit(colour)[0, :, 32, 32]
    torch.testing.assert_close(peak, torch.tensor([1.12, 1.0, 0.88]) * 0.8)


def test_sky_offsets_and_noise_has_its_std_and_is_reproducible() -> None:
    blank = torch.full((4, 3, 64, 64), -0.5)  # unit 0.25, far from both clamps
    sky = apply_condition(blank, by_name(["sky"])[0], RANGE)
    torch.testing.assert_close(_unit(sky), torch.full_like(blank, 0.31))
    noise = by_name(["noise"])[0]
    a = apply_condition(blank, noise, RANGE, torch.Generator().manual_seed(1))
    b = apply_condition(blank, noise, RANGE, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert float((_unit(a) - 0.25).std()) == pytest.approx(0.05, rel=0.03)


def test_seeing_widens_a_source_and_zoom_scales_its_size() -> None:
    batch = _disc(radius=6.0)
    m0 = _second_moment(_unit(batch)[0, 0])
    seen = _unit(apply_condition(batch, by_name(["seeing"])[0], RANGE))[0, 0]
    # second moments add under convolution; a Moffat kernel has more than a Gaussian of the
    # same FWHM (0.03 x 64 = 1.92 px), whose 2-D second moment is 2 (FWHM / 2.3548)^2 = 1.33
    assert _second_moment(seen) - m0 > 2.0 * (0.03 * 64 / 2.3548) ** 2
    assert float(seen.sum()) == pytest.approx(float(_unit(batch)[0, 0].sum()), rel=0.02)
    for name, zoom in (("larger", 1.3), ("smaller", 0.75)):
        scaled = _unit(apply_condition(batch, by_name([name])[0], RANGE))[0, 0]
        # a disc's second moment grows with the square of its radius
        assert _second_moment(scaled) == pytest.approx(m0 * zoom**2, rel=0.08), name


def test_a_contrast_stretch_keeps_the_mean() -> None:
    batch = _disc() * 0.5
    out = apply_condition(batch, Condition("s", "", contrast=0.7), RANGE)
    assert float(_unit(out).mean()) == pytest.approx(float(_unit(batch).mean()), rel=1e-4)
    assert float(_unit(out).std()) == pytest.approx(0.7 * float(_unit(batch).std()), rel=1e-3)


def test_an_unknown_condition_is_a_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown condition.*seeing"):
        by_name(["seing"])
    assert CONDITIONS[0].name == "clean"


def test_shift_reads_crossval_runs_and_its_clean_column_is_their_test_accuracy(
    easy_folder: Path, tmp_path: Path
) -> None:
    base = tiny_config_values(easy_folder, tmp_path / "unused", epochs=1, val_fraction=0.2)
    del base["out"]
    out = tmp_path / "cv"
    variants = [Variant("base", {}), Variant("smooth", {"label_smoothing": 0.1})]
    cv = run_crossval(base, variants, out, folds=2, seed=0, echo=lambda _: None)
    conditions = by_name(["clean", "fainter", "seeing", "larger"])
    doc = run_shift(out, easy_folder, conditions=conditions, echo=lambda _: None)
    for variant in ("base", "smooth"):
        for fold in ("r0f0", "r0f1"):
            row = doc["runs"][variant][fold]
            assert set(row) == {"clean", "fainter", "seeing", "larger"}
            assert row["clean"]["images"] == cv["runs"][variant][fold]["images"]
            assert row["clean"]["accuracy"] == pytest.approx(cv["runs"][variant][fold]["accuracy"])
        summary = doc["summary"][variant]
        shifted = np.mean(
            [
                doc["runs"][variant][f][c]["accuracy"]
                for f in ("r0f0", "r0f1")
                for c in ("fainter", "seeing", "larger")
            ]
        )
        assert summary["shifted"] == pytest.approx(shifted)
    metrics = {c["metric"] for c in doc["comparisons"]}
    assert metrics == {"accuracy (clean)", "accuracy (shifted)"}
    report = (out / "shift.md").read_text()
    assert "| smooth | 2 |" in report and "seeing" in report
    assert json.loads((out / "shift.json").read_text())["folds"] == 2

    # single runs that share a split, compared image by image
    single = tmp_path / "single"
    runs = ["--run", f"base={out / 'base' / 'r0f0'}", "--run", f"smooth={out / 'smooth' / 'r0f0'}"]
    options = ["--data", str(easy_folder), "--out", str(single), "--conditions", "seeing"]
    code = main(["shift", *options, *runs])
    assert code == 0
    pair = json.loads((single / "shift.json").read_text())
    for row in pair["per_image"]:
        base_acc = doc["runs"]["base"]["r0f0"][row["condition"]]["accuracy"]
        own_acc = doc["runs"]["smooth"]["r0f0"][row["condition"]]["accuracy"]
        assert row["diff"] == pytest.approx(own_acc - base_acc)
        images = doc["runs"]["base"]["r0f0"]["clean"]["images"]
        assert row["gained"] - row["lost"] == round(row["diff"] * images)
        assert 0.0 <= row["p_value"] <= 1.0
    assert {r["condition"] for r in pair["per_image"]} == {"clean", "seeing"}
    with pytest.raises(UsageError, match="other test parts"):
        run_single(
            {"a": out / "base" / "r0f0", "b": out / "base" / "r0f1"},
            easy_folder,
            tmp_path / "bad",
            conditions=conditions[:1],
            echo=lambda _: None,
        )


def test_cli_refuses_a_folder_that_is_not_a_crossval_out(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["shift", "--runs", str(tmp_path), "--data", str(easy_folder)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    code = main(
        ["shift", "--runs", str(tmp_path), "--data", str(easy_folder), "--conditions", "fog"]
    )
    assert code == 2
    assert "unknown condition" in capsys.readouterr().err
    assert main(["shift", "--run", f"a={tmp_path}", "--data", str(easy_folder)]) == 2
    assert "--run needs --out" in capsys.readouterr().err


def test_mcnemar_counts_only_the_discordant_images() -> None:
    base = np.array([True] * 50 + [False] * 50)
    same = mcnemar(base, base.copy())
    assert same == {"gained": 0, "lost": 0, "p_value": 1.0}
    other = base.copy()
    other[50:60] = True  # 10 gained, none lost: p = 2 / 2**10
    result = mcnemar(base, other)
    assert (result["gained"], result["lost"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 / 2**10)
