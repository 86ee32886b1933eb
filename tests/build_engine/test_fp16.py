"""FP16 conversion: float32 I/O, LayerNorm/Softmax kept float32, close to FP32 in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from build_engine.errors import PrecisionError
from build_engine.export import run_onnx
from build_engine.fp16 import FP16_ATOL, FP16_RTOL, convert_fp16, float32_inputs_of


def _inputs(size: int = 64, n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def fp16_onnx(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("fp16") / "model_fp16.onnx"
    convert_fp16(tiny_onnx, dst, _inputs())
    return dst


def test_io_stays_float32(fp16_onnx: Path) -> None:
    model = onnx.load(str(fp16_onnx))
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name


def test_weights_are_float16(fp16_onnx: Path) -> None:
    model = onnx.load(str(fp16_onnx))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert conv_weights and all(
        types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights if w in types
    )


def test_layernorm_and_softmax_see_float32(fp16_onnx: Path) -> None:
    model = onnx.load(str(fp16_onnx))
    kept = float32_inputs_of(model, ("LayerNormalization", "Softmax"))
    assert len(kept) >= 2  # MobileViT has both
    for name, elem_types in kept.items():
        assert elem_types[0] == onnx.TensorProto.FLOAT, name
    matmuls = float32_inputs_of(model, ("MatMul",))
    assert any(t[0] == onnx.TensorProto.FLOAT16 for t in matmuls.values()), "nothing runs in FP16"


def test_matches_fp32_within_tolerance(tiny_onnx: Path, fp16_onnx: Path) -> None:
    x = _inputs(n=6)
    ref, got = run_onnx(tiny_onnx, x), run_onnx(fp16_onnx, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=FP16_ATOL, rtol=FP16_RTOL)
    assert float(np.max(np.abs(got - ref))) > 0  # really converted, not a copy


def test_mismatch_beyond_tolerance_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(PrecisionError, match="use --precision fp32"):
        convert_fp16(tiny_onnx, tmp_path / "m.onnx", _inputs(), atol=0.0, rtol=0.0)
