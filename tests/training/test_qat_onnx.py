"""The QAT export's graph surgery: ModelOpt's cast zero points folded into plain constants."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from build_engine.quantize import check_qdq
from training.qat_onnx import fold_constant_casts


def test_fold_constant_casts_makes_zero_points_constants() -> None:
    zero = helper.make_node(
        "Constant", [], ["z32"], value=numpy_helper.from_array(np.array(0.0, np.float32))
    )
    cast = helper.make_node("Cast", ["z32"], ["z8"], to=TensorProto.INT8)
    scale = helper.make_node(
        "Constant", [], ["s"], value=numpy_helper.from_array(np.array(0.1, np.float32))
    )
    q = helper.make_node("QuantizeLinear", ["x", "s", "z8"], ["q"])
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z8"], ["y"])
    graph = helper.make_graph(
        [zero, cast, scale, q, dq],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constant_casts(model) == 1
    assert check_qdq(model) == 1
    onnx.checker.check_model(model)
