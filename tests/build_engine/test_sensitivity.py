"""Per-layer INT8 sensitivity and mixed precision (build_engine/sensitivity.py).

A two-layer model built by hand, where one layer's activation scale is deliberately far too
coarse, shows that both modes find that layer and that keeping it out restores the output;
then build-engine --keep-sensitive on the tiny MobileViT records what it kept in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from bundle_testkit import write_labelled_set
from onnx import TensorProto, helper, numpy_helper

from build_engine.errors import PrecisionError, UsageError
from build_engine.images import LabelledBatch
from build_engine.pipeline import build
from build_engine.qdq_graph import check_qdq
from build_engine.request import BuildRequest
from build_engine.sensitivity import (
    SensitivityReport,
    keep_in_float,
    kl_divergence,
    load_sensitivity,
    measure,
    quantized_layers,
    rewire_to_float,
)
from edge_agent.contract.manifest import load_bundle

RNG = np.random.default_rng(3)
W1 = RNG.normal(0, 0.5, (8, 8)).astype(np.float32)
W2 = RNG.normal(0, 0.5, (8, 10)).astype(np.float32)


def _qdq(
    name: str, tensor: str, scale: float
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
        numpy_helper.from_array(np.array(0, np.int8), f"{name}_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
        helper.make_node(
            "DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"]
        ),
    ]
    return nodes, inits


def _model(quantized: bool, coarse_scale: float = 5.0) -> onnx.ModelProto:
    """input (N x 8) -> mm1 (W1) -> relu -> mm2 (W2) -> logits; Q/DQ on every MatMul input."""
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")]
    nodes: list[onnx.NodeProto] = []
    a1, w1, a2, w2 = "input", "W1", "h", "W2"
    if quantized:
        for name, tensor, scale in (
            ("x", "input", 3.0 / 127),
            ("w1", "W1", 2.0 / 127),
            ("h", "h", coarse_scale),  # far coarser than h's range: mm2 sees mostly zeros
            ("w2", "W2", 2.0 / 127),
        ):
            more_nodes, more_inits = _qdq(name, tensor, scale)
            nodes += more_nodes
            inits += more_inits
        a1, w1, a2, w2 = "x_dq", "w1_dq", "h_dq", "w2_dq"
    compute = [
        helper.make_node("MatMul", [a1, w1], ["mm1_out"], name="mm1"),
        helper.make_node("Relu", ["mm1_out"], ["h"], name="relu"),
        helper.make_node("MatMul", [a2, w2], ["logits"], name="mm2"),
    ]
    # Q/DQ of h must come after relu in topological order
    order = [n for n in nodes if not n.output[0].startswith("h_")]
    order += compute[:2] + [n for n in nodes if n.output[0].startswith("h_")] + compute[2:]
    graph = helper.make_graph(
        order,
        "two_layers",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def two_layers(tmp_path: Path) -> tuple[Path, Path, LabelledBatch]:
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_model(False), str(fp32))
    onnx.save(_model(True), str(int8))
    images = RNG.uniform(-1, 1, (32, 8)).astype(np.float32)
    data = LabelledBatch(images, np.zeros(32, np.int64), [f"r{i}" for i in range(32)], "random")
    return fp32, int8, data


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def test_quantized_layers_are_the_nodes_reading_qdq() -> None:
    assert quantized_layers(_model(True)) == ["mm1", "mm2"]
    assert quantized_layers(_model(False)) == []


@pytest.mark.parametrize("mode", ["only", "without"])
def test_both_modes_rank_the_coarse_layer_first(
    two_layers: tuple[Path, Path, LabelledBatch], mode: str
) -> None:
    fp32, int8, data = two_layers
    report = measure(fp32, int8, data, mode=mode)  # type: ignore[arg-type]
    assert report.most_sensitive(1) == ["mm2"]
    assert report.int8_kl > 0.05 and report.int8_agreement < 1.0
    # round trip through JSON (bench caches it)
    assert SensitivityReport.from_json(report.to_json()) == report


def test_keeping_the_sensitive_layer_out_restores_the_output(
    two_layers: tuple[Path, Path, LabelledBatch], tmp_path: Path
) -> None:
    fp32, int8, data = two_layers
    mixed = tmp_path / "mixed.onnx"
    assert keep_in_float(int8, mixed, ["mm2"]) == 2  # activation and weight of mm2
    model = onnx.load(str(mixed))
    assert check_qdq(model) == 2  # mm1's two quantizers remain
    ref, full, kept = _run(fp32, data.images), _run(int8, data.images), _run(mixed, data.images)
    assert kl_divergence(ref, kept) < kl_divergence(ref, full) / 10
    # mm2 reads float tensors again; its Q/DQ nodes are gone
    mm2 = next(n for n in model.graph.node if n.name == "mm2")
    assert list(mm2.input) == ["h", "W2"]
    assert not any(n.output[0].startswith(("h_", "w2_")) for n in model.graph.node)


def test_keeping_every_layer_out_is_no_int8_model(two_layers, tmp_path: Path) -> None:
    _, int8, _ = two_layers
    with pytest.raises(PrecisionError, match="no Q/DQ"):
        keep_in_float(int8, tmp_path / "none.onnx", ["mm1", "mm2"])


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(PrecisionError, match="no node named 'conv9'"):
        rewire_to_float(_model(True), {"conv9"})


def test_sensitivity_images_exclude_given_refs(tmp_path: Path) -> None:
    from edge_agent.contract.labelled_data import open_labelled
    from edge_agent.contract.preprocess import DEFAULT_SPEC

    csv_path = write_labelled_set(tmp_path / "set", 12)
    refs = [open_labelled(csv_path).ref(i) for i in range(12)]
    spec = DEFAULT_SPEC.model_copy(update={"input_size": 32})
    got = load_sensitivity(csv_path, 100, exclude=set(refs[:9]), spec=spec)
    assert got.refs == refs[9:] and got.images.shape == (3, 3, 32, 32)
    with pytest.raises(Exception, match="no image left"):
        load_sensitivity(csv_path, 5, exclude=set(refs), spec=spec)


def test_build_engine_keeps_the_most_sensitive_layers_and_records_them(
    tiny_onnx: Path, tmp_path: Path, cpu_device
) -> None:
    labelled = write_labelled_set(tmp_path / "set", 40)
    request = BuildRequest(
        out=tmp_path / "bundle",
        onnx=tiny_onnx,
        precision="int8",
        backend="onnxruntime",
        calib_data=labelled,
        calib_size=12,
        gate_size=8,
        gate_threshold=100.0,
        gate_min_images=1,
        quantizer="onnxruntime",
        keep_sensitive=2,
        sensitivity_size=6,
        progress=False,
    )
    lines: list[str] = []
    manifest = build(request, cpu_device, lines.append)
    q = manifest.quantization
    assert len(q.excluded_nodes) == 2 and q.sensitivity and "only mode on 6 images" in q.sensitivity
    assert q.calibration_method == "minmax"
    shipped = onnx.load(str(tmp_path / "bundle" / "model.onnx"))
    assert not set(q.excluded_nodes) & set(quantized_layers(shipped))
    assert any("mixed precision: 2 most sensitive" in line for line in lines)
    assert load_bundle(tmp_path / "bundle").quantization.excluded_nodes == q.excluded_nodes


def test_keep_sensitive_needs_int8(tiny_onnx: Path, tmp_path: Path, cpu_device) -> None:
    request = BuildRequest(out=tmp_path / "b", onnx=tiny_onnx, precision="fp32", keep_sensitive=2)
    with pytest.raises(UsageError, match="--keep-sensitive"):
        build(request, cpu_device, lambda _: None)
