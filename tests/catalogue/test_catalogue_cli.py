"""galaxy-catalogue's exit codes and one-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogue.cli import main


def test_bad_settings_are_exit_2_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "writer.yaml"
    cfg.write_text("broker:\n  prot: 1883\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "broker.prot: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["run", "--port", "0"]) == 2
    assert "broker.port" in capsys.readouterr().err
    assert main(["run", "--shared-group", "a/b"]) == 2
    assert "broker.shared_group" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--database", "mysql://nope"]) == 1
    assert "unknown database URL" in capsys.readouterr().err
    assert main(["query", "--database", "sqlite:////proc/nope/cat.sqlite3"]) == 1
    assert "cannot open the SQLite catalogue" in capsys.readouterr().err
