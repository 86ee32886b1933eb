"""Q/DQ graph rules and rewiring (build_engine/qdq_graph.py), shared by quantize and sensitivity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from build_engine.errors import PrecisionError
from build_engine.qdq_graph import (
    check_qdq,
    detach_excluded_from_dq,
    prune_dead_qdq,
    rewire_to_float_where,
)


def _graph_with_shared_dq(zero_point: int = 0) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv and the same DQ -> Add(residual): the case quantizers produce."""
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(zero_point, np.int8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
        helper.make_node("Conv", ["xdq", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "xdq"], ["y"], name="add"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", [vi[0]], [vi[1]], [w, scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_detach_rewires_excluded_input_to_the_float_tensor() -> None:
    model = _graph_with_shared_dq()
    with pytest.raises(PrecisionError, match="excluded op reads INT8"):
        check_qdq(model)
    assert detach_excluded_from_dq(model) == 1
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert list(add.input) == ["c", "x"]
    check_qdq(model)  # the Conv keeps its Q/DQ
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 1


def test_nonzero_zero_point_is_rejected() -> None:
    model = _graph_with_shared_dq(zero_point=3)
    detach_excluded_from_dq(model)
    with pytest.raises(PrecisionError, match="zero point"):
        check_qdq(model)


def test_rewiring_leaves_unread_qdq_for_the_pruning() -> None:
    """Both readers of DQ(Q(x)) back on x: the pair stays until pruned; a DQ of a constant
    (INT8 weights) has no float tensor behind it and is left alone."""
    model = _graph_with_shared_dq()
    wq = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.int8), "wq")
    model.graph.initializer.append(wq)
    model.graph.node.insert(
        0, helper.make_node("DequantizeLinear", ["wq", "s"], ["wdq"], name="wdq")
    )
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[1] = "wdq"
    assert rewire_to_float_where(model, lambda node: node.op_type in ("Conv", "Add")) == 2
    assert list(conv.input) == ["x", "wdq"]
    assert {n.name for n in model.graph.node} == {"q", "dq", "wdq", "conv", "add"}
    prune_dead_qdq(model)
    assert {n.name for n in model.graph.node} == {"wdq", "conv", "add"}
