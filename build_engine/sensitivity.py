"""Per-layer INT8 sensitivity, and mixed precision that keeps the most sensitive layers out of INT8.

A Q/DQ graph says per input where INT8 is used: a layer (Conv, MatMul, Gemm...) is in INT8 when
it reads ``DequantizeLinear(QuantizeLinear(x))`` instead of ``x``. Keeping a layer in higher
precision is therefore a rewiring: its inputs go back to the float tensors (activation and
weight), and Q/DQ pairs nobody reads any more are dropped. The scales of every other layer stay
those calibration chose, so what the sensitivity pass measured is what ships.

The pass (:func:`measure`) runs the FP32 model and, for each quantized layer, a variant on a
sensitivity set that must not be the accuracy gate's images (the gate would then pass a model
tuned on it). Two modes:

- ``only``: the layer alone in INT8, everything else float ("quantize one at a time"): how much
  error the layer itself brings;
- ``without``: every layer in INT8 except this one ("keep one out"): how much keeping it out
  recovers, interactions included. About twice as slow (the INT8 graph runs slower on a CPU).

The score is the mean KL divergence of the variant's softmax from the FP32 softmax (smooth, so
64 images rank layers where top-1 agreement alone would be mostly ties); agreement of top-1 is
reported too. The ``n`` layers with the highest scores are the ones :func:`keep_in_float` keeps
out; build-engine records them in the manifest (``quantization.excluded_nodes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from build_engine.errors import CalibrationError, PrecisionError
from build_engine.progress import bar
from build_engine.qdq_graph import (
    QDQ_OPS,
    check_qdq,
    float_source,
    producers,
    prune_dead_qdq,
    rewire_to_float_where,
)
from edge_agent.contract.decode_config import DecodeSpec

if TYPE_CHECKING:
    import onnx

    from build_engine.images import LabelledBatch
    from edge_agent.contract.preprocess import PreprocessSpec

Mode = Literal["only", "without"]
DEFAULT_SIZE = 64
EVAL_BATCH = 16


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read at least one INT8 (Q->DQ) input, in graph order."""
    producer = producers(model)
    names = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if any(float_source(name, producer) is not None for name in node.input):
            if not node.name:
                raise PrecisionError(
                    f"a quantized {node.op_type} node has no name; the sensitivity pass needs "
                    "named nodes (report this bug)"
                )
            names.append(node.name)
    return names


def rewire_to_float(model: onnx.ModelProto, names: set[str]) -> int:
    """Feed the nodes ``names`` their float inputs instead of Q->DQ copies; returns rewires."""
    known = {node.name for node in model.graph.node}
    missing = sorted(names - known)
    if missing:
        raise PrecisionError(
            f"no node named {missing[0]!r} in the quantized model ({len(missing)} unknown); "
            "sensitivity results belong to another model: rerun the pass"
        )
    rewired = rewire_to_float_where(model, lambda node: node.name in names)
    prune_dead_qdq(model)
    return rewired


def keep_in_float(src: Path, dst: Path, names: list[str]) -> int:
    """Write ``src`` (a Q/DQ ONNX) to ``dst`` with the layers ``names`` out of INT8."""
    import onnx

    model = onnx.load(str(src))
    rewired = rewire_to_float(model, set(names))
    check_qdq(model)
    onnx.save(model, str(dst))
    return rewired


def _logits(session: object, images: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    out = [
        np.asarray(session.run(None, {name: images[i : i + EVAL_BATCH]})[0])  # type: ignore[attr-defined]
        for i in range(0, len(images), EVAL_BATCH)
    ]
    return np.concatenate(out).astype(np.float64)


def _session(model: onnx.ModelProto | Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(candidate)) over rows of logits, in nats."""
    p, q = _softmax(reference), _softmax(candidate)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


@dataclass(frozen=True)
class LayerScore:
    """One layer's effect on the output: mean KL from FP32 (nats) and top-1 agreement."""

    node: str
    op_type: str
    kl: float
    agreement: float


@dataclass
class SensitivityReport:
    """What :func:`measure` found: the all-INT8 baseline and each layer's score."""

    mode: Mode
    images: int
    source: str
    int8_kl: float
    int8_agreement: float
    layers: list[LayerScore] = field(default_factory=list)

    def ranked(self) -> list[LayerScore]:
        """Most sensitive first.

        ``only``: the layer alone in INT8 moves the output most (highest KL); ``without``:
        keeping it out leaves the least error (lowest KL), i.e. recovers the most.
        """
        if self.mode == "only":
            return sorted(self.layers, key=lambda s: (-s.kl, s.agreement, s.node))
        return sorted(self.layers, key=lambda s: (s.kl, -s.agreement, s.node))

    def most_sensitive(self, n: int) -> list[str]:
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n}")
        return [s.node for s in self.ranked()[:n]]

    def summary(self, top: int = 8) -> str:
        """Lines for the log: the baseline, then the ``top`` most sensitive layers."""
        what = "alone in INT8" if self.mode == "only" else "kept out of INT8"
        lines = [
            f"sensitivity ({self.mode}: each of {len(self.layers)} layers {what}) on "
            f"{self.images} images of {self.source}: all-INT8 KL {self.int8_kl:.4f}, "
            f"agreement {self.int8_agreement:.1%}"
        ]
        lines += [
            f"  {k + 1}. {s.node} ({s.op_type}): KL {s.kl:.4f}, agreement {s.agreement:.1%}"
            for k, s in enumerate(self.ranked()[:top])
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityReport:
        raw = json.loads(text)
        raw["layers"] = [LayerScore(**layer) for layer in raw["layers"]]
        return cls(**raw)


def measure(
    reference: Path,
    quantized: Path,
    data: LabelledBatch,
    *,
    mode: Mode = "only",
    progress: bool = False,
) -> SensitivityReport:
    """Score every quantized layer of ``quantized`` against ``reference`` (FP32) on ``data``."""
    import onnx

    if len(data) == 0:
        raise CalibrationError("sensitivity set is empty; give more labelled images")
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    ref = _logits(_session(reference), images)
    ref_top = ref.argmax(axis=1)
    base = onnx.load(str(quantized))
    int8 = _logits(_session(base), images)
    layers = quantized_layers(base)
    ops = {node.name: node.op_type for node in base.graph.node}
    scores = []
    shown = bar(f"sensitivity ({mode})", len(layers), progress, unit="layer")
    with shown:
        for name in layers:
            variant = onnx.ModelProto()
            variant.CopyFrom(base)
            rewire_to_float(variant, {n for n in layers if n != name} if mode == "only" else {name})
            out = _logits(_session(variant), images)
            scores.append(
                LayerScore(
                    node=name,
                    op_type=ops[name],
                    kl=round(kl_divergence(ref, out), 6),
                    agreement=float(np.mean(out.argmax(axis=1) == ref_top)),
                )
            )
            shown.update()
    return SensitivityReport(
        mode=mode,
        images=len(data),
        source=data.source,
        int8_kl=round(kl_divergence(ref, int8), 6),
        int8_agreement=float(np.mean(int8.argmax(axis=1) == ref_top)),
        layers=scores,
    )


def load_sensitivity(
    path: Path,
    size: int,
    *,
    exclude: set[str],
    spec: PreprocessSpec,
    decode: DecodeSpec | None = None,
) -> LabelledBatch:
    """Up to ``size`` labelled images of ``path`` whose refs are not in ``exclude``.

    ``exclude`` holds the gate's images (which must never tune the model) and the calibration
    images (so the pass measures on images the scales were not fitted to). Picked evenly over
    the set (the sample is sorted by class). Raises when none are left.
    """
    from build_engine.images import _load, _open

    # decoded as the model was trained (its DecodeSpec; None: the defaults)
    dataset = _open(Path(path), None, "sensitivity", (decode or DecodeSpec()).decoder())
    free = np.array(
        [i for i in range(len(dataset)) if dataset.ref(i) not in exclude], dtype=np.int64
    )
    if len(free) == 0:
        raise CalibrationError(
            f"{path}: no image left for the sensitivity pass after calibration and the gate; "
            "give a larger --calib-data set or a smaller --calib-size"
        )
    if size < len(free):
        free = free[np.unique(np.linspace(0, len(free) - 1, size).round().astype(np.int64))]
    return _load(dataset, free, spec, f"{path} (not calibration, not gate)")


def keep_most_sensitive(
    reference: Path,
    quantized: Path,
    n: int,
    sensitivity_data: LabelledBatch,
    *,
    mode: Mode = "only",
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> tuple[list[str], str]:
    """Measure, then rewrite ``quantized`` in place with its ``n`` most sensitive layers float.

    Returns the layers kept out (most sensitive first) and a one-line account for the manifest.
    """
    report = measure(reference, quantized, sensitivity_data, mode=mode, progress=progress)
    log(report.summary(max(n, 3)))
    kept = report.most_sensitive(n)
    keep_in_float(quantized, quantized, kept)
    scores = ", ".join(f"{s.node} KL {s.kl:.4f}" for s in report.ranked()[:n])
    line = (
        f"{mode} mode on {report.images} images ({report.source}); all-INT8 KL {report.int8_kl:.4f},"
        f" agreement {report.int8_agreement:.1%}; kept: {scores}"
    )
    log(f"mixed precision: {n} most sensitive of {len(report.layers)} layers kept out of INT8")
    return kept, line
