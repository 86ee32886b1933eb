"""The comparison tool: same frames through two models, differences measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from build_engine.bundle import write_bundle
from build_engine.compare import compare, main, open_runner, random_frames
from build_engine.errors import BuildEngineError
from build_engine.fp16 import convert_fp16


@pytest.fixture(scope="module")
def fp16_path(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("cmp") / "fp16.onnx"
    convert_fp16(tiny_onnx, dst, np.zeros((1, 3, 64, 64), np.float32))
    return dst


def test_bundle_and_its_source_agree_exactly(
    tiny_onnx: Path, tmp_path: Path, make_manifest
) -> None:
    manifest = make_manifest(
        preprocess=make_manifest().preprocess.model_copy(update={"input_size": 64})
    )
    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"model.onnx": tiny_onnx}, manifest)
    result = compare(open_runner(bundle), open_runner(tiny_onnx), random_frames(7), batch=3)
    assert result.images == 7
    assert result.max_abs_diff == 0.0 and result.top1_agreement == 1.0


def test_fp16_differs_a_little(tiny_onnx: Path, fp16_path: Path) -> None:
    result = compare(open_runner(tiny_onnx), open_runner(fp16_path), random_frames(6))
    assert 0.0 < result.max_abs_diff < 0.05
    assert result.mean_abs_diff <= result.max_abs_diff


def test_random_frames_have_odd_sizes() -> None:
    shapes = {f.shape for f in random_frames(5)}
    assert len(shapes) == 5 and all(s[2] == 3 for s in shapes)


def test_cli_exit_codes(tiny_onnx: Path, fp16_path: Path, capsys) -> None:
    assert main([str(tiny_onnx), str(fp16_path), "--count", "4"]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    assert main([str(tiny_onnx), str(fp16_path), "--count", "4", "--atol", "0"]) == 1


def test_unknown_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildEngineError, match="neither a bundle"):
        open_runner(tmp_path / "x.txt")
