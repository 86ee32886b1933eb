"""The calibration record in the weights' metadata: round trip, re-recorded sha, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from training_testkit import flip_bytes
from weights_testkit import recorded_weights

from edge_agent.contract.manifest import Calibration
from training.calibration_record import CALIBRATION_KEY, read_calibration, write_calibration
from training.errors import CheckpointError
from training.weights import verify_weights

RECORD = Calibration(
    temperature=1.7, fitted_on="validation split of x", images=100, ece_before=0.2, ece_after=0.05
)


def test_the_record_round_trips_in_the_weights_and_the_sha_is_re_recorded(tmp_path: Path) -> None:
    from safetensors import safe_open

    weights = recorded_weights(tmp_path)
    before = verify_weights(weights)
    assert read_calibration(weights) is None
    after = write_calibration(weights, RECORD)
    assert after != before and verify_weights(weights) == after
    assert read_calibration(weights) == RECORD
    with safe_open(str(weights), framework="numpy") as fh:
        assert fh.metadata()["galaxy_edge_config"] == "{}"  # other metadata kept
        assert fh.get_tensor("w").tolist() == np.arange(12).reshape(3, 4).tolist()


def test_tampered_weights_are_never_given_a_temperature(tmp_path: Path) -> None:
    weights = recorded_weights(tmp_path)
    flip_bytes(weights, 8)
    with pytest.raises(CheckpointError, match="differs"):
        write_calibration(weights, RECORD)


def test_a_record_that_does_not_validate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={CALIBRATION_KEY: '{"x": 1}'})
    with pytest.raises(CheckpointError, match="galaxy-train calibrate"):
        read_calibration(path)
