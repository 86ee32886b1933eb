"""Temperature scaling: the fit, the error figures, the record in the weights, training and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from training_testkit import flip_bytes, tiny_config_values

from edge_agent.contract import exit_codes
from edge_agent.contract.manifest import Calibration
from training.calibration import (
    CALIBRATION_KEY,
    RELIABILITY_NAME,
    CalibrationError,
    ece,
    figures,
    fit_temperature,
    nll,
    read_calibration,
    reliability_bins,
    softmax,
    write_calibration,
)
from training.checkpoint import load_for_export
from training.cli import main
from training.config import make_config
from training.errors import CheckpointError
from training.train import train
from training.weights import record_weights, verify_weights


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``T * u`` whose labels are drawn from ``softmax(u)``: T is the true temperature."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.5, (n, 10))
    p = softmax(u)
    labels = (rng.random((n, 1)) < p.cumsum(axis=1)).argmax(axis=1)
    return u * temperature, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0, 3.5])
def test_the_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = sampled(20000, true_t)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.04)
    # it is the minimum of the NLL: either side is worse
    assert nll(logits, labels, fitted) < nll(logits, labels, fitted * 1.1)
    assert nll(logits, labels, fitted) < nll(logits, labels, fitted / 1.1)


def test_ece_of_a_calibrated_set_is_near_zero_and_of_an_overconfident_one_is_not() -> None:
    logits, labels = sampled(20000, 1.0, seed=1)
    assert ece(softmax(logits), labels) < 0.015
    overconfident = softmax(logits * 3.0)  # same predictions, sharper probabilities
    assert ece(overconfident, labels) > 0.1
    assert ece(softmax(logits * 3.0, 3.0), labels) < 0.015


def test_ece_by_hand() -> None:
    # two bins; bin (0.5, 1]: confidences 0.9 and 0.7, one right -> |0.5 - 0.8| = 0.3;
    # bin (0, 0.5]: confidence 0.4, right -> |1 - 0.4| = 0.6; ECE = (2 * 0.3 + 0.6) / 3 = 0.4
    probs = np.array([[0.9, 0.1, 0.0], [0.3, 0.7, 0.0], [0.4, 0.3, 0.3]])
    labels = np.array([0, 0, 0])
    assert ece(probs, labels, bins=2) == pytest.approx(0.4)
    r = reliability_bins(probs, labels, bins=2)
    assert r.counts.tolist() == [1, 2]
    assert r.confidence.tolist() == pytest.approx([0.4, 0.8])
    assert r.accuracy.tolist() == pytest.approx([1.0, 0.5])


def test_temperature_changes_no_prediction_and_figures_say_before_and_after() -> None:
    logits, labels = sampled(3000, 2.5, seed=2)
    t = fit_temperature(logits, labels)
    assert np.array_equal(softmax(logits, t).argmax(1), logits.argmax(1))
    f = figures(logits, labels, t)
    assert f["images"] == 3000
    assert f["after"]["ece"] < f["before"]["ece"]
    assert f["after"]["nll"] < f["before"]["nll"]
    assert f["after"]["brier"] < f["before"]["brier"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        fit_temperature(np.zeros((0, 10)), np.zeros(0))
    with pytest.raises(CalibrationError, match="NaN"):
        fit_temperature(np.full((2, 10), np.nan), np.zeros(2))
    with pytest.raises(CalibrationError, match="labels outside"):
        fit_temperature(np.zeros((2, 10)), np.array([0, 10]))


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "best.safetensors"
    save_file(
        {"w": np.arange(12, dtype=np.float32).reshape(3, 4)},
        str(path),
        metadata={"galaxy_edge_config": "{}"},
    )
    record_weights(path)
    return path


RECORD = Calibration(
    temperature=1.7, fitted_on="validation split of x", images=100, ece_before=0.2, ece_after=0.05
)


def test_the_record_round_trips_in_the_weights_and_the_sha_is_re_recorded(tmp_path: Path) -> None:
    from safetensors import safe_open

    weights = _weights(tmp_path)
    before = verify_weights(weights)
    assert read_calibration(weights) is None
    after = write_calibration(weights, RECORD)
    assert after != before and verify_weights(weights) == after
    assert read_calibration(weights) == RECORD
    with safe_open(str(weights), framework="numpy") as fh:
        assert fh.metadata()["galaxy_edge_config"] == "{}"  # other metadata kept
        assert fh.get_tensor("w").tolist() == np.arange(12).reshape(3, 4).tolist()


def test_tampered_weights_are_never_given_a_temperature(tmp_path: Path) -> None:
    weights = _weights(tmp_path)
    flip_bytes(weights, 8)
    with pytest.raises(CheckpointError, match="differs"):
        write_calibration(weights, RECORD)


def test_a_record_that_does_not_validate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={CALIBRATION_KEY: '{"x": 1}'})
    with pytest.raises(CheckpointError, match="galaxy-train calibrate"):
        read_calibration(path)


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
    weights = _weights(tmp_path)
    assert main(["calibrate", "--checkpoint", str(tmp_path), "--data", "/nonexistent"]) == (
        exit_codes.USAGE
    )
    flip_bytes(weights, 8)
    code = main(["calibrate", "--checkpoint", str(tmp_path), "--data", str(easy_folder)])
    assert code == exit_codes.FAILURE
    assert "differs" in capsys.readouterr().err


def test_the_noise_floor_is_what_a_calibrated_model_shows_on_so_few_images() -> None:
    from training.calibration import ece_noise_floor

    logits, labels = sampled(100, 1.0, seed=3)
    probs = softmax(logits)
    floor = ece_noise_floor(probs)
    assert 0.03 < floor < 0.2  # 100 images in 15 bins: far from 0 though perfectly calibrated
    big_logits, _ = sampled(20000, 1.0, seed=3)
    assert ece_noise_floor(softmax(big_logits), draws=5) < 0.015
    assert "ece_noise_floor" in figures(logits, labels, 1.0)
