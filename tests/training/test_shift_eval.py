"""galaxy-train shift: reads crossval runs and single runs, and reports what they measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_testkit import tiny_config_values

from training.cli import main
from training.crossval import Variant, run_crossval
from training.errors import UsageError
from training.shift_eval import run_shift, run_single
from training.survey_conditions import by_name


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
