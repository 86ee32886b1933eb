"""INT8 Q/DQ: symmetric (zero points 0), excluded ops untouched by INT8, runs in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from build_engine.errors import CalibrationError
from build_engine.export import run_onnx
from build_engine.qdq_graph import EXCLUDED_OPS
from build_engine.quantize import quantize_int8

CALIB = np.random.default_rng(2).uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32)


def _assert_trt_ready(path: Path) -> None:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    zero_points = [inits[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2]]
    assert all(np.all(z == 0) for z in zero_points)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    excluded = [n for n in model.graph.node if n.op_type in EXCLUDED_OPS]
    assert {n.op_type for n in excluded} == set(EXCLUDED_OPS)
    for node in excluded:
        for name in node.input:
            src = producer.get(name)
            assert src is None or src.op_type != "DequantizeLinear", f"{node.name} reads {src.name}"
    # Conv weights are INT8 per output channel: DQ(int8 constant) or DQ(Q(float constant)),
    # with one scale per output channel either way.
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", conv.name
        scale = inits[dq.input[1]]
        out_channels = model_weight_shape(model, conv.input[1], producer, inits)[0]
        assert scale.size == out_channels > 1, conv.name


def model_weight_shape(model, name, producer, inits):  # type: ignore[no-untyped-def]
    """Shape of the float or int8 constant behind a weight's Q/DQ chain."""
    node = producer.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = node.input[0]
        node = producer.get(name)
    return inits[name].shape


@pytest.mark.parametrize("method", ["modelopt", "onnxruntime"])
def test_quantized_model_is_symmetric_and_leaves_excluded_ops_alone(
    method: str, tiny_onnx: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "int8.onnx"
    try:
        report = quantize_int8(tiny_onnx, dst, CALIB, method=method, calibration_method="max")  # type: ignore[arg-type]
    except CalibrationError as exc:
        if "does not import" not in str(exc):
            raise
        pytest.skip(str(exc))
    assert report.method == f"qdq-{method}"
    assert report.calibration_images == len(CALIB)
    assert report.qdq_pairs > 10
    _assert_trt_ready(dst)
    ref, got = run_onnx(tiny_onnx, CALIB[:4]), run_onnx(dst, CALIB[:4])
    assert got.shape == ref.shape and np.all(np.isfinite(got))
    # INT8 changes the numbers but stays in the same range as FP32.
    assert 0 < np.max(np.abs(got - ref)) < 10 * (np.max(np.abs(ref)) + 1e-3)


def test_empty_calibration_set_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="empty"):
        quantize_int8(tiny_onnx, tmp_path / "q.onnx", np.zeros((0, 3, 64, 64), np.float32))


def test_fp16_remainder_for_tensorrt(tiny_onnx: Path, tmp_path: Path) -> None:
    """INT8 + FP16 (what a Jetson runs fastest): I/O and LayerNorm/Softmax still float32."""
    from build_engine.fp16 import float32_inputs_of

    dst = tmp_path / "int8_fp16.onnx"
    try:
        quantize_int8(
            tiny_onnx,
            dst,
            CALIB,
            method="modelopt",
            calibration_method="max",
            high_precision="fp16",
        )
    except CalibrationError as exc:
        if "does not import" not in str(exc):
            raise
        pytest.skip(str(exc))
    _assert_trt_ready(dst)
    model = onnx.load(str(dst))
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert TensorProto.FLOAT16 in {i.data_type for i in model.graph.initializer}
    kept = float32_inputs_of(model, ("LayerNormalization", "Softmax"))
    assert kept and all(types[0] == TensorProto.FLOAT for types in kept.values())
    got = run_onnx(dst, CALIB[:2])
    assert np.all(np.isfinite(got))
