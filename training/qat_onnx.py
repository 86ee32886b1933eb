"""The QAT model as ONNX: explicit symmetric Q/DQ pairs, plain-constant zero points, metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

OPSET = 17


def fold_constant_casts(model: Any) -> int:
    """Replace ``Cast(Constant)`` by one Constant: ModelOpt writes zero points that way.

    build-engine's Q/DQ check (and TensorRT) want zero points that are plain constants.
    Returns how many casts were folded.
    """
    from onnx import helper, numpy_helper

    consts = {
        node.output[0]: node
        for node in model.graph.node
        if node.op_type == "Constant" and any(a.name == "value" for a in node.attribute)
    }
    folded = 0
    for k, node in enumerate(list(model.graph.node)):
        if node.op_type != "Cast" or node.input[0] not in consts:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        value = numpy_helper.to_array(
            next(a.t for a in consts[node.input[0]].attribute if a.name == "value")
        )
        dtype = helper.tensor_dtype_to_np_dtype(to)
        replacement = helper.make_node(
            "Constant",
            [],
            [node.output[0]],
            name=node.name or f"folded_cast_{k}",
            value=numpy_helper.from_array(value.astype(dtype)),
        )
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, replacement)
        folded += 1
    return folded


def _qdq_pairs(model: Any) -> int:
    return sum(1 for node in model.graph.node if node.op_type == "QuantizeLinear")


def export_qat_onnx(
    model: torch.nn.Module,
    path: Path,
    input_size: int,
    metadata: dict[str, str],
) -> tuple[int, float]:
    """Export the fake-quantized ``model`` with explicit Q/DQ; returns (pairs, max |onnx - torch|)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, input_size, input_size)
    # ModelOpt's quantizers trace with Python branches on amax (TracerWarnings) and only the
    # TorchScript exporter knows their Q/DQ symbolic (a DeprecationWarning): expected, silenced.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    graph = onnx.load(str(path))
    fold_constant_casts(graph)
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    check = torch.from_numpy(
        np.random.default_rng(0)
        .uniform(-1.0, 1.0, (2, 3, input_size, input_size))
        .astype("float32")
    )
    with torch.no_grad():
        expected = model(check).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": check.numpy()})[0]
    return _qdq_pairs(graph), float(np.max(np.abs(got - expected)))
