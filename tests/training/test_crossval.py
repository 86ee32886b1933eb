"""Cross-validation: every variant on the same folds, finished folds reused, partial reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_testkit import tiny_config_values

from training.crossval import Variant, run_crossval


def test_crossval_runs_every_variant_on_the_same_folds_and_reuses_finished_ones(
    easy_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny_config_values(easy_folder, tmp_path / "unused", epochs=1, val_fraction=0.2)
    del base["out"]
    out = tmp_path / "cv"
    variants = [Variant("base", {}), Variant("smooth", {"label_smoothing": 0.1})]
    first = run_crossval(base, variants, out, folds=2, seed=0, only=["base"], echo=lambda _: None)
    assert set(first["runs"]["base"]) == {"r0f0", "r0f1"} and first["runs"]["smooth"] == {}
    assert not (out / "smooth").exists()
    assert {c["verdict"] for c in first["comparisons"]} == {"too few runs"}
    doc = run_crossval(base, variants, out, folds=2, repeats=1, seed=0, echo=lambda _: None)
    for f in ("r0f0", "r0f1"):  # the base folds were reused, not trained again
        assert doc["runs"]["base"][f]["accuracy"] == first["runs"]["base"][f]["accuracy"]
        assert doc["runs"]["base"][f]["seconds"] < 5
    assert set(doc["runs"]["base"]) == set(doc["runs"]["smooth"]) == {"r0f0", "r0f1"}
    tests = []
    for fold in ("r0f0", "r0f1"):
        a = json.loads((out / "base" / fold / "split.json").read_text())
        b = json.loads((out / "smooth" / fold / "split.json").read_text())
        assert a["test"] == b["test"] and a["train"] == b["train"]  # paired: the same images
        tests.append(set(a["test"]))
    assert not (tests[0] & tests[1]) and len(tests[0] | tests[1]) == 120
    assert doc["summary"]["base"]["runs"] == 2
    assert {c["metric"] for c in doc["comparisons"]} == {"accuracy", "macro_f1"}
    finished = json.loads((out / "smooth" / "r0f1" / "metrics.json").read_text())
    report = (out / "crossval.md").read_text()
    assert "| smooth | accuracy | 2 |" in report and "±" in report

    (out / "smooth" / "r0f1" / "metrics.json").unlink()  # as if cut mid-fold
    partial = run_crossval(
        base, variants, out, folds=2, seed=0, report_only=True, echo=lambda _: None
    )
    assert set(partial["runs"]["smooth"]) == {"r0f0"}
    assert partial["summary"]["smooth"]["runs"] == 1
    assert not (out / "smooth" / "r0f1" / "metrics.json").exists()  # not trained again
    (out / "smooth" / "r0f1" / "metrics.json").write_text(json.dumps(finished))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("training.train.train", no_training)
    again = run_crossval(base, variants, out, folds=2, repeats=1, seed=0, echo=lambda _: None)
    assert again["runs"]["smooth"]["r0f1"]["accuracy"] == doc["runs"]["smooth"]["r0f1"]["accuracy"]
