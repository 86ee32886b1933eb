"""galaxy-train qat's command line: bad options refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from weights_testkit import recorded_weights

from training import cli


def test_qat_cli_refuses_bad_options_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded_weights(tmp_path)  # a checkpoint whose weights verify: the data is what is refused
    assert cli.main(["qat", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "q")]) == 2  # fmt: skip
    assert "nope: does not exist" in capsys.readouterr().err
    assert cli.main(["qat", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path),
                     "--out", str(tmp_path / "q")]) == 2  # fmt: skip
    assert not (tmp_path / "q").exists()
