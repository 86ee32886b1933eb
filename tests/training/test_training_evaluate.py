"""Metrics as in the paper's Table 2, dihedral TTA, and evaluation of a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from training_testkit import tiny_config_values

from training.config import make_config
from training.evaluate import compute_metrics, dihedral, evaluate_checkpoint, format_report
from training.train import train


def test_metrics_match_sklearn_and_list_every_class() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 5])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2, 5])
    m = compute_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    rows = {r["id"]: r for r in m["per_class"]}
    assert len(rows) == 10 and rows[2]["name"] == "Round Smooth"
    assert rows[2]["support"] == 3 and rows[2]["recall"] == pytest.approx(2 / 3)
    assert rows[9]["support"] == 0
    assert np.asarray(m["confusion_matrix"]).sum() == 8
    report = format_report(m)
    assert "Round Smooth" in report and "macro avg" in report


def test_dihedral_group_has_eight_distinct_exact_transforms() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert torch.equal(outs[0], x)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    assert all(sorted(o.flatten().tolist()) == list(range(16)) for o in outs)


def test_evaluate_a_run_with_and_without_tta(easy_folder: Path, tmp_path: Path) -> None:
    config = make_config(tiny_config_values(easy_folder, tmp_path / "run", epochs=8, patience=8))
    train(config, echo=lambda _: None)
    lines: list[str] = []
    report = evaluate_checkpoint(
        tmp_path / "run", easy_folder, out=tmp_path / "ev", tta=True, part="test",
        progress=False, echo=lines.append,
    )  # fmt: skip
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The test part of the run's split, evaluated again: the same accuracy as the run reported.
    assert report["plain"]["accuracy"] == pytest.approx(saved["test"]["accuracy"])
    assert report["tta"]["images"] == report["plain"]["images"] == saved["split"]["test"]
    assert report["tta"]["accuracy"] >= 0.8
    assert any("TTA changes accuracy" in line for line in lines)
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["part"] == "test"
