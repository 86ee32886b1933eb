"""Reading and rewiring Q/DQ ONNX graphs, and the rules TensorRT's explicit INT8 needs.

A node runs in INT8 on an input when it reads ``DequantizeLinear(QuantizeLinear(x))`` instead
of ``x``; taking it out of INT8 is a rewiring back to ``x`` (:func:`rewire_to_float_where`), after
which Q/DQ pairs nobody reads are dropped (:func:`prune_dead_qdq`). Both INT8 paths use this:
the quantizer keeps LayerNorm, Softmax and residual Add out of INT8
(:func:`detach_excluded_from_dq`, :mod:`build_engine.quantize`), and mixed precision keeps the
most sensitive layers out (:mod:`build_engine.sensitivity`). :func:`check_qdq` is the check every
Q/DQ graph a bundle ships goes through, quantized here or taken as it is
(:mod:`build_engine.prequantized`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from build_engine.errors import PrecisionError

if TYPE_CHECKING:
    import onnx

EXCLUDED_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "Add")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node that writes each tensor, by tensor name."""
    return {out: node for node in model.graph.node for out in node.output}


def float_source(name: str, producer: dict[str, onnx.NodeProto]) -> str | None:
    """The float tensor behind ``name`` when ``name`` is DQ(Q(x)), else ``None``.

    A DQ of a constant (INT8 weights stored as such) has no float tensor to go back to.
    """
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    return str(q.input[0])


def rewire_to_float_where(model: onnx.ModelProto, pick: Callable[[onnx.NodeProto], bool]) -> int:
    """Feed the nodes ``pick`` selects the float tensor x wherever they read DQ(Q(x)).

    Returns how many inputs were rewired; the Q/DQ nodes left unread stay until
    :func:`prune_dead_qdq`.
    """
    producer = producers(model)
    rewired = 0
    for node in model.graph.node:
        if not pick(node):
            continue
        for k, name in enumerate(node.input):
            source = float_source(name, producer)
            if source is not None:
                node.input[k] = source
                rewired += 1
    return rewired


def prune_dead_qdq(model: onnx.ModelProto) -> None:
    """Drop Q/DQ nodes whose outputs nothing reads (a graph output counts as read)."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [
            node
            for node in model.graph.node
            if node.op_type in QDQ_OPS and not any(out in used for out in node.output)
        ]
        if not dead:
            return
        for node in dead:
            model.graph.node.remove(node)


def unshare_constants(model: onnx.ModelProto, excluded: tuple[str, ...] = EXCLUDED_OPS) -> int:
    """Give excluded ops their own copy of initializers they share with quantized ops.

    onnxsim merges equal constants (e.g. the zero biases of a freshly initialised LayerNorm and
    Linear); a quantizer then quantizes the shared tensor for the Linear and the LayerNorm reads
    its INT8 copy. Returns how many inputs got a private copy.
    """
    inits = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    copied = 0
    for node in model.graph.node:
        if node.op_type not in excluded:
            continue
        for k, name in enumerate(node.input):
            if name in inits and users[name] > 1:
                clone = model.graph.initializer.add()
                clone.CopyFrom(inits[name])
                clone.name = f"{name}__{node.op_type}_{copied}"
                node.input[k] = clone.name
                users[name] -= 1
                copied += 1
    return copied


def detach_excluded_from_dq(
    model: onnx.ModelProto, excluded: tuple[str, ...] = EXCLUDED_OPS
) -> int:
    """Feed excluded ops the float tensor instead of a shared Q->DQ copy of it; returns rewires."""
    rewired = rewire_to_float_where(model, lambda node: node.op_type in excluded)
    if rewired:
        prune_dead_qdq(model)
    return rewired


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _qdq_nodes(model: onnx.ModelProto) -> list[Any]:
    return [n for n in model.graph.node if n.op_type in QDQ_OPS]


def check_qdq(model: onnx.ModelProto, excluded: tuple[str, ...] = EXCLUDED_OPS) -> int:
    """Raise :class:`PrecisionError` unless the Q/DQ graph is what TensorRT needs; returns pairs.

    Every zero point is 0 (or absent, which means 0); no excluded op reads a DequantizeLinear of
    anything; at least one Q/DQ pair exists (else nothing was quantized).
    """
    constants = _constant_values(model)
    nodes = _qdq_nodes(model)
    for node in nodes:
        if len(node.input) > 2 and node.input[2]:
            zero_point = constants.get(node.input[2])
            if zero_point is None:
                raise PrecisionError(f"{node.name}: zero point {node.input[2]!r} is not a constant")
            if np.any(zero_point != 0):
                raise PrecisionError(
                    f"{node.name}: non-zero zero point; TensorRT needs symmetric INT8 (report this bug)"
                )
    producer = producers(model)
    for node in model.graph.node:
        if node.op_type not in excluded:
            continue
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                raise PrecisionError(
                    f"{node.name or node.op_type}: excluded op reads INT8 input {name!r}"
                )
    quantizers = sum(1 for n in nodes if n.op_type == "QuantizeLinear")
    if quantizers == 0:
        raise PrecisionError(
            "INT8 quantization inserted no Q/DQ nodes; the model has no Conv/MatMul/Gemm?"
        )
    return quantizers
