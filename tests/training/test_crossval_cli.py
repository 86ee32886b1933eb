"""galaxy-train crossval's command line: bad variants refused before training, variant files."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import main
from training.crossval_cli import parse_variant
from training.variants import Variant


def test_cli_refuses_a_bad_variant_before_training(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["crossval", "--data", str(easy_folder), "--out", str(tmp_path / "cv"),
         "--variant", 'typo={"regularise": {"ema_dacay": 0.9}}', "--device", "cpu"]
    )  # fmt: skip
    assert code == 2
    assert "variant typo: regularise.ema_dacay" in capsys.readouterr().err
    assert not (tmp_path / "cv" / "base").exists()
    code = main(["crossval", "--data", str(easy_folder), "--out", str(tmp_path), "--variant", "x"])
    assert code == 2
    code = main(["crossval", "--data", str(easy_folder), "--out", str(tmp_path), "--only", "nope"])
    assert code == 2
    assert "--only nope: no such variant" in capsys.readouterr().err


def test_parse_variant_reads_json_and_files(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text('{"epochs": 3}')
    assert parse_variant(f"a={path}") == Variant("a", {"epochs": 3})
    assert parse_variant('b={"lr": 0.001}') == Variant("b", {"lr": 0.001})
