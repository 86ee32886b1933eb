"""Calibration/gate split: deterministic, disjoint, and bad sets named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_engine.errors import CalibrationError
from build_engine.images import load_calibration_and_gate, split_indices
from edge_agent.contract.preprocess import DEFAULT_SPEC

SPEC = DEFAULT_SPEC.model_copy(update={"input_size": 64})


def test_split_is_disjoint_and_deterministic() -> None:
    calib, gate = split_indices(100, calib_size=60, gate_size=30)
    assert len(gate) == 30 and len(calib) == 60
    assert not set(calib) & set(gate)
    again = split_indices(100, calib_size=60, gate_size=30)
    assert np.array_equal(calib, again[0]) and np.array_equal(gate, again[1])


def test_small_set_gives_the_gate_at_most_half() -> None:
    calib, gate = split_indices(5, calib_size=100, gate_size=100)
    assert len(gate) == 2 and len(calib) == 3


def test_single_image_cannot_be_split() -> None:
    with pytest.raises(CalibrationError, match="at least 2"):
        split_indices(1, 10, 10)


def test_load_from_one_set_never_shares_images(labelled_csv: Path) -> None:
    calib, gate = load_calibration_and_gate(labelled_csv, 20, 10, spec=SPEC)
    assert len(calib) == 20 and len(gate) == 10
    assert not set(calib.refs) & set(gate.refs)
    assert calib.images.shape == (20, 3, 64, 64) and calib.images.dtype == np.float32
    assert calib.images.min() >= -1.0 and calib.images.max() <= 1.0
    assert set(gate.labels.tolist()) <= set(range(10))


def test_gate_data_overlapping_calibration_is_refused(labelled_csv: Path) -> None:
    with pytest.raises(CalibrationError, match="shares"):
        load_calibration_and_gate(labelled_csv, 10, 10, gate_path=labelled_csv, spec=SPEC)


def test_missing_and_unlabelled_sets(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration_and_gate(tmp_path / "nope.csv", 4, 4, spec=SPEC)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(CalibrationError, match="class sub-folders"):
        load_calibration_and_gate(tmp_path / "flat", 4, 4, spec=SPEC)
    empty = tmp_path / "empty.csv"
    empty.write_text("file,label\n")
    with pytest.raises(CalibrationError, match="empty"):
        load_calibration_and_gate(empty, 4, 4, spec=SPEC)


SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "galaxy10-sample" / "labels.csv"


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"shared sample not found at {SAMPLE}")
def test_real_sample_splits_into_calibration_and_gate() -> None:
    calib, gate = load_calibration_and_gate(SAMPLE, 12, 8)
    assert calib.images.shape == (12, 3, 256, 256) and len(gate) == 8
    assert not set(calib.refs) & set(gate.refs)
    assert len(set(calib.labels.tolist()) | set(gate.labels.tolist())) > 1
