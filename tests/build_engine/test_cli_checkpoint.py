"""build-engine --checkpoint: the weights are verified, every input is checked before the export
starts, and the slow steps show progress on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import build_engine.source as build_source  # noqa: E402
from build_engine.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main  # noqa: E402
from edge_agent.contract.manifest import load_bundle  # noqa: E402
from edge_agent.contract.preprocess import PreprocessSpec  # noqa: E402

SPEC = PreprocessSpec(input_size=32, crop="none", scale=1.0 / 255.0, offset=0.0)
# The ONNX Runtime path, whatever this host has (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("host_without_openvino")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A galaxy-train run directory (weights, their recorded sha256), of a 0.1 M-param model."""
    from training.checkpoint import save_best
    from training.config import make_config
    from training.model import create_model

    run = tmp_path_factory.mktemp("ckpt") / "run"
    run.mkdir()
    config = make_config(
        {
            "data": "unused.csv",
            "out": str(run),
            "model": "test_efficientnet",
            "image_size": 32,
            "preprocess": SPEC.model_dump(),
        }
    )
    torch.manual_seed(0)
    save_best(create_model("test_efficientnet", 10, None, 0.0), config, run)
    return run


@pytest.fixture
def tampered(checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the run whose weights had 400 bytes flipped inside the tensor data."""
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(checkpoint, copy)
    weights = copy / "best.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 400):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the export (the first slow step) is ever reached."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export started before the inputs were checked")

    monkeypatch.setattr(build_source, "export_checkpoint", refuse)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_flipped_bytes_in_the_weights_are_refused(
    tampered: Path, no_leftovers: Path, no_export: None, capsys
) -> None:
    """It used to build a bundle with exit 0: safetensors loads flipped tensor bytes."""
    rc, stdout, stderr = run(capsys, "--checkpoint", tampered, "--out", no_leftovers / "b")
    assert rc == EXIT_ERROR and stdout == ""
    (line,) = stderr.splitlines()
    assert line.startswith("build-engine: error: ") and "modified or corrupted" in line
    assert "best.safetensors: sha256" in line


def test_weights_without_a_recorded_sha256_are_refused(
    tampered: Path, no_leftovers: Path, no_export: None, capsys
) -> None:
    (tampered / "best.safetensors.sha256").unlink()
    rc, _, stderr = run(capsys, "--checkpoint", tampered, "--out", no_leftovers / "b")
    assert rc == EXIT_ERROR and "no recorded sha256" in stderr and "sha256sum" in stderr


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--precision", "int8"], "needs --calib-data"),
        (["--precision", "int8", "--calib-data", "{tmp}/nope.csv"], "--calib-data"),
        (["--precision", "fp16", "--gate-data", "{tmp}/nope"], "--gate-data"),
        (["--preprocess-spec", "{spec}"], "a checkpoint carries the spec"),
    ],
)
def test_inputs_are_checked_before_the_export(
    extra: list[str],
    expected: str,
    checkpoint: Path,
    tmp_path: Path,
    no_leftovers: Path,
    no_export: None,
    capsys,
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(SPEC.model_dump_json())
    argv = ["--checkpoint", checkpoint, "--out", no_leftovers / "b"]
    argv += [a.format(tmp=tmp_path, spec=spec) for a in extra]
    rc, _, stderr = run(capsys, *argv)
    assert rc == EXIT_USAGE, stderr
    assert expected in stderr.splitlines()[-1]


def test_a_gate_set_below_the_minimum_is_refused_before_the_export(
    checkpoint: Path, labelled_csv: Path, no_leftovers: Path, no_export: None, capsys
) -> None:
    argv = ["--checkpoint", checkpoint, "--out", no_leftovers / "b", "--precision", "fp16"]
    rc, _, stderr = run(capsys, *argv, "--gate-data", labelled_csv)
    assert rc == EXIT_USAGE
    assert "needs at least 200 held-out images, got 40" in stderr


def test_export_and_gate_show_progress_on_stderr(
    checkpoint: Path, labelled_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "bundle"
    argv = ["--checkpoint", checkpoint, "--out", out, "--precision", "fp16"]
    argv += ["--gate-data", labelled_csv, "--gate-min-images", "10", "--gate-threshold", "100"]
    rc, stdout, stderr = run(capsys, *argv)
    assert rc == EXIT_OK, stderr
    assert "export: " in stderr and "checked against PyTorch" in stderr
    assert "gate: reference" in stderr and "gate: candidate" in stderr
    assert stdout.count("\n") == 1  # progress never reaches stdout, the result line does
    manifest = load_bundle(out)
    assert manifest.preprocess == SPEC and manifest.accuracy_gate is not None
    rc, _, quiet = run(capsys, *argv, "--no-progress")
    assert rc == EXIT_OK and "gate: reference" not in quiet and "export: " not in quiet
