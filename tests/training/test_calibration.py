"""Temperature scaling applied to a run: training ends calibrated, and the calibrate CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from training_testkit import flip_bytes, tiny_config_values
from weights_testkit import recorded_weights

from edge_agent.contract import exit_codes
from training.calibration import RELIABILITY_NAME, read_calibration
from training.checkpoint import load_for_export
from training.cli import main
from training.config import make_config
from training.train import train
from training.weights import verify_weights


def test_training_ends_calibrated_and_calibrate_refits_the_run(
    easy_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = make_config(tiny_config_values(easy_folder, out, epochs=3))
    metrics = train(config, echo=lambda _: None)

    report = metrics["calibration"]
    record = read_calibration(out / "best.safetensors")
    assert record is not None and record.temperature == pytest.approx(report["temperature"])
    assert math.isfinite(record.temperature) and record.temperature > 0
    assert record.images == report["validation"]["images"] == len(json.loads(
        (out / "split.json").read_text())["val"])  # fmt: skip
    assert record.test_ece_after == pytest.approx(report["test"]["after"]["ece"])
    assert (out / RELIABILITY_NAME).stat().st_size > 1000
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["calibration"]["temperature"] == pytest.approx(record.temperature)
    verify_weights(out / "best.safetensors")  # the record follows the rewritten file

    # refit from the run directory: the same images, so the same T; metadata rewritten
    (out / RELIABILITY_NAME).unlink()
    code = main(
        ["calibrate", "--checkpoint", str(out), "--data", str(easy_folder), "--device", "cpu",
         "--no-progress", "--bins", "10"]
    )  # fmt: skip
    assert code == exit_codes.OK
    again = read_calibration(out / "best.safetensors")
    assert again is not None and again.bins == 10
    assert again.temperature == pytest.approx(record.temperature, rel=1e-3)
    assert (out / RELIABILITY_NAME).is_file()
    verify_weights(out / "best.safetensors")
    # what build-engine's export reads: the record travels with the loaded model
    assert load_for_export(out).calibration == again


def test_calibrate_refuses_tampered_weights_and_missing_data(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = recorded_weights(tmp_path)
    assert main(["calibrate", "--checkpoint", str(tmp_path), "--data", "/nonexistent"]) == (
        exit_codes.USAGE
    )
    flip_bytes(weights, 8)
    code = main(["calibrate", "--checkpoint", str(tmp_path), "--data", str(easy_folder)])
    assert code == exit_codes.FAILURE
    assert "differs" in capsys.readouterr().err
