"""FP16 conversion of an FP32 ONNX model, for TensorRT's strongly typed networks.

In a strongly typed network the ONNX types ARE the precision, so FP16 is obtained by converting
the ONNX itself rather than by a builder flag (gone in TensorRT 11). Three things stay float32:

- the graph's input and output, so every runtime feeds and reads float32 whatever the precision;
- LayerNormalization and Softmax: their mean/variance and exp-sum reductions overflow FP16's
  65504 on vision-transformer activations, a known failure that gives NaN logits;
- the other reductions and the ops whose intermediate values grow fast (Pow, Exp, ReduceSum...).

The converter is ONNX Runtime's ``float16`` module (it ships with onnxruntime, a runtime
dependency already): it inserts the Cast nodes at every float32/float16 boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build_engine.errors import PrecisionError
from build_engine.export import load_onnx, run_onnx

if TYPE_CHECKING:
    import onnx

KEEP_FLOAT32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "Pow",
    "Exp",
)
# FP16 keeps ~3 significant digits; logits of a 10-class head agree to this after ~20 layers.
FP16_ATOL = 5e-2
FP16_RTOL = 2e-2


@dataclass(frozen=True)
class Fp16Report:
    """How the FP16 model compared with its FP32 source on the check batch."""

    max_abs_diff: float
    top1_agreement: float
    kept_float32: tuple[str, ...]


def convert_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 copy of ``model`` with float32 I/O and :data:`KEEP_FLOAT32_OPS` in float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(KEEP_FLOAT32_OPS))
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=block,
        # Constants outside FP16's range are clipped, not turned to inf.
        min_positive_val=5.96e-08,
        max_finite_val=65504.0,
    )
    topological_sort(converted)
    return converted


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder the graph's nodes so each comes after its inputs' producers.

    The converter appends the Cast of the graph input at the end, which ``onnx.checker`` and
    TensorRT's ONNX parser (it reads nodes in order) both reject.
    """
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise PrecisionError(
                "FP16 graph has a cycle or an input nobody produces; report this bug"
            )
        for node in ready:
            available.update(node.output)
            ordered.append(node)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def float32_inputs_of(model: onnx.ModelProto, op_types: tuple[str, ...]) -> dict[str, list[int]]:
    """For each node of ``op_types``: the ONNX element types of its data inputs.

    Used by the tests and by :func:`convert_fp16` to prove the kept ops really see float32.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in (
        list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    ):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    found: dict[str, list[int]] = {}
    for node in inferred.graph.node:
        if node.op_type in op_types:
            found[node.name or node.output[0]] = [types.get(i, 0) for i in node.input if i]
    return found


def convert_fp16(
    src: Path,
    dst: Path,
    check_batch: np.ndarray,
    *,
    atol: float = FP16_ATOL,
    rtol: float = FP16_RTOL,
) -> Fp16Report:
    """Write the FP16 version of ``src`` to ``dst`` and compare both on ``check_batch`` (ORT CPU).

    Raises :class:`PrecisionError` when the FP16 logits are not finite or differ by more than
    ``atol + rtol * |fp32|``: that model must not be shipped as FP16.
    """
    import onnx

    converted = convert_model(load_onnx(src))
    kept = float32_inputs_of(converted, ("LayerNormalization", "Softmax"))
    wrong = [name for name, elem in kept.items() if elem and elem[0] != onnx.TensorProto.FLOAT]
    if wrong:
        raise PrecisionError(f"FP16 conversion left {wrong[0]} outside float32; report this bug")
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    reference = run_onnx(src, check_batch)
    candidate = run_onnx(dst, check_batch)
    if not np.all(np.isfinite(candidate)):
        raise PrecisionError(
            f"{dst}: FP16 logits overflow (inf/NaN) where FP32 is finite; use --precision fp32"
        )
    diff = float(np.max(np.abs(candidate - reference)))
    if not np.allclose(candidate, reference, atol=atol, rtol=rtol):
        raise PrecisionError(
            f"{dst}: FP16 logits differ from FP32 by up to {diff:.3g} (allowed {atol:g} + "
            f"{rtol:g}*|x|); use --precision fp32"
        )
    agreement = float(np.mean(candidate.argmax(1) == reference.argmax(1)))
    return Fp16Report(max_abs_diff=diff, top1_agreement=agreement, kept_float32=KEEP_FLOAT32_OPS)
