"""galaxy-train: thin CLI; bad input is one line on stderr and the exit code of its kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_testkit import TINY_MODEL, flip_bytes

from training.cli import main

TINY = [
    "--model",
    TINY_MODEL,
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "--no-progress",
]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "--data", "{tmp}/missing.h5", "--out", "{tmp}/r"],
            "missing.h5: does not exist",
        ),
        (["train", "--data", "{tmp}/nothing", "--out", "{tmp}/r"], "nothing: does not exist"),
        (
            ["train", "--data", "{data}", "--out", "{tmp}/r", "--model", "nonet_9"],
            "unknown timm model",
        ),
        (
            ["train", "--data", "{data}", "--out", "{tmp}/r", "--lr", "0"],
            "lr: Input should be greater than 0",
        ),
        (["train", "--out", "{tmp}/r"], "--data is required"),
        (["train", "--out", "{tmp}/r", "--resume"], "config.json: cannot read config"),
        (["train", "--data", "{data}", "--out", "{tmp}/r", "--device", "tpu"], "not a device"),
        (["evaluate", "--checkpoint", "{tmp}", "--data", "{data}"], "no checkpoint here"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(
    args: list[str],
    expected: str,
    easy_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.format(tmp=tmp_path, data=easy_folder) for a in args]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith("galaxy-train: error: ") and expected in line, line


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "x", "--out", "r"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_train_resume_and_evaluate_through_the_cli(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(easy_folder), "--out", str(run), "--epochs", "1", *TINY]) == 0
    )
    assert "test acc" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert (
        saved["model"] == TINY_MODEL
        and saved["epochs"] == 1
        and saved["preprocess"]["input_size"] == 32
    )

    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.1"]) == 2
    assert "cannot change lr" in _one_error_line(capsys)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2" in out
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [1, 2]

    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--data",
                str(easy_folder),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "Round Smooth" in report and "macro avg" in report and "Barred Spiral" in report


def test_evaluate_refuses_tampered_weights_with_a_runtime_failure(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 flipped bytes inside best.safetensors: refused (exit 1) before any image is read."""
    run = tmp_path / "run"
    argv = ["train", "--data", str(easy_folder), "--out", str(run), "--epochs", "1", *TINY]
    assert main(argv) == 0
    capsys.readouterr()
    flip_bytes(run / "best.safetensors")
    rc = main(["evaluate", "--checkpoint", str(run), "--data", str(easy_folder), "--no-progress"])
    assert rc == 1
    line = _one_error_line(capsys)
    assert "best.safetensors: sha256" in line and "modified or corrupted" in line


def test_a_preprocess_spec_file_sets_the_spec_and_the_image_size(
    easy_folder: Path, tmp_path: Path
) -> None:
    spec = {"input_size": 32, "crop": "none", "scale": 1 / 255, "offset": 0.0}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    run = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--image-size", "32")]
    argv = ["train", "--data", str(easy_folder), "--out", str(run), "--epochs", "1", *tiny]
    assert main([*argv, "--preprocess-spec", str(path), "--limit", "30"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["image_size"] == 32
    assert {k: saved["preprocess"][k] for k in spec} == spec
    # --resume keeps that spec (it used to be reset to the default)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["preprocess"] == saved["preprocess"]
