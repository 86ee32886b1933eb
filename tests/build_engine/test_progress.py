"""Progress on stderr: bars that count, a ticking bar for steps that cannot, nothing when off."""

from __future__ import annotations

import time

import numpy as np
import pytest

from build_engine.progress import bar, ticking
from build_engine.quantize import _BatchReader


def test_calibration_reader_counts_images_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    reader = _BatchReader(np.zeros((20, 3, 4, 4), np.float32), "x", progress=True)
    batches = 0
    while reader.get_next() is not None:
        batches += 1
    assert batches == 3
    out, err = capsys.readouterr()
    assert out == "" and "INT8 calibration" in err and "/20 " in err


def test_ticking_shows_elapsed_time_while_a_step_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with ticking("calibrating", True, interval_s=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("calibrating: 00:00 elapsed") >= 2  # refreshed while the body ran


def test_disabled_progress_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ticking("calibrating", False), bar("gate", 5, False) as shown:
        shown.update(5)
    assert capsys.readouterr() == ("", "")
