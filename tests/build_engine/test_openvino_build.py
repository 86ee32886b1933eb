"""build-engine --backend openvino: candidates gated through OpenVINO, the fastest that passes ships."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from build_engine.device import DeviceInfo
from build_engine.errors import AccuracyGateError, UsageError
from build_engine.openvino_build import Timing
from build_engine.openvino_choice import OpenVinoCandidate, candidates, choose
from build_engine.pipeline import build
from build_engine.request import BuildRequest, resolve_backend
from edge_agent.backends.openvino_host import OpenVinoHost
from edge_agent.contract.manifest import AccuracyGate, load_bundle

pytest.importorskip("openvino", reason="openvino is not installed (extra [openvino])")


def _gate(passed: bool) -> AccuracyGate:
    return AccuracyGate(
        reference="fp32 onnxruntime", images=300, source="x", reference_top1=0.7,
        candidate_top1=0.7 if passed else 0.6, delta_points=0.0 if passed else 10.0,
        agreement=1.0 if passed else 0.8, threshold_points=1.0, passed=passed,
        finding="shown" if passed else "not shown",
    )  # fmt: skip


def test_auto_picks_openvino_on_an_intel_cpu_where_it_is_installed(
    tmp_path: Path, cpu_device: DeviceInfo
) -> None:
    request = BuildRequest(out=tmp_path / "b")
    intel = dataclasses.replace(cpu_device, openvino_version="2026.4", intel_cpu=True)
    backend, notice = resolve_backend(request, intel)
    assert backend == "openvino" and notice is not None and "Intel CPU" in notice
    amd = dataclasses.replace(cpu_device, openvino_version="2026.4", intel_cpu=False)
    assert resolve_backend(request, amd)[0] == "onnxruntime"
    assert resolve_backend(request, cpu_device)[0] == "onnxruntime"  # not installed
    jetson = dataclasses.replace(intel, tensorrt_version="10.3.0")
    assert resolve_backend(request, jetson)[0] == "tensorrt"
    explicit = BuildRequest(out=tmp_path / "b", backend="onnxruntime")
    assert resolve_backend(explicit, intel)[0] == "onnxruntime"


def test_wrong_precisions_are_refused_before_any_work(
    tmp_path: Path, tiny_onnx: Path, cpu_device: DeviceInfo
) -> None:
    for request, match in (
        (BuildRequest(out=tmp_path / "a", onnx=tiny_onnx, backend="openvino", precision="fp16"),
         "fp16 is not built for OpenVINO"),
        (BuildRequest(out=tmp_path / "b", onnx=tiny_onnx, backend="openvino", precision="bf16"),
         "needs held-out labelled images"),
        (BuildRequest(out=tmp_path / "c", onnx=tiny_onnx, backend="onnxruntime", precision="bf16"),
         "bf16 is for --backend openvino"),
    ):  # fmt: skip
        with pytest.raises(UsageError, match=match):
            build(request, cpu_device, lambda _: None)
        assert not request.out.exists()


def test_candidates_are_what_this_host_can_gate(tmp_path: Path) -> None:
    src, q = tmp_path / "m.onnx", tmp_path / "q.onnx"
    bf16_host = OpenVinoHost("1", "Xeon", ["avx512_bf16"], True)
    plain_host = OpenVinoHost("1", "Core", ["avx2"], True)
    lines: list[str] = []
    only = candidates(None, src, q, None, bf16_host, lines.append)
    assert [c.precision for c in only] == ["fp32"] and "no held-out labelled images" in lines[0]
    gate = object()
    assert [c.precision for c in candidates(None, src, q, gate, bf16_host, print)] == [  # type: ignore[arg-type]
        "fp32", "bf16", "int8",
    ]  # fmt: skip
    assert [c.precision for c in candidates(None, src, None, gate, plain_host, print)] == [  # type: ignore[arg-type]
        "fp32"
    ]
    (asked,) = candidates("int8", src, q, gate, plain_host, print)  # type: ignore[arg-type]
    assert (asked.onnx, asked.hint) == (q, "f32")


def test_the_fastest_that_passed_ships_and_the_log_says_why(tmp_path: Path) -> None:
    fp32 = OpenVinoCandidate("fp32", tmp_path, "f32", None, Timing(20.0, 20.0, 8))
    bf16 = OpenVinoCandidate("bf16", tmp_path, "bf16", _gate(True), Timing(10.0, 9.0, 8))
    int8 = OpenVinoCandidate("int8", tmp_path, "f32", _gate(False), None)
    lines: list[str] = []
    assert choose([fp32, bf16, int8], lines.append) is bf16
    assert "shipping BF16" in lines[-1] and "fp32 20.0 ms/img" in lines[-1]
    assert "int8 refused by the gate" in lines[-1]
    fast_int8 = OpenVinoCandidate("int8", tmp_path, "f32", _gate(True), Timing(5.0, 4.0, 8))
    assert choose([fp32, bf16, fast_int8], lines.append) is fast_int8
    with pytest.raises(AccuracyGateError, match="openvino int8 refused"):
        choose([int8], lines.append)


def test_a_gated_openvino_bundle_is_written_checked_and_loads(
    tmp_path: Path, tiny_onnx: Path, labelled_csv: Path, cpu_device: DeviceInfo
) -> None:
    """Through the real gate on OpenVINO: every candidate this CPU offers, a bundle that loads."""
    from build_engine.check import stale_reasons
    from edge_agent.backends.factory import create_backend

    out = tmp_path / "ov"
    lines: list[str] = []
    request = BuildRequest(
        out=out, onnx=tiny_onnx, backend="openvino", gate_data=labelled_csv,
        gate_min_images=20, gate_threshold=100.0, progress=False,
    )  # fmt: skip
    manifest = build(request, cpu_device, lines.append)
    assert manifest.backend == "openvino" and manifest.openvino is not None
    assert manifest.model_file == "model.ov.blob" and set(manifest.files) == {
        "model.onnx",
        "model.ov.blob",
    }
    assert any(line.startswith("openvino: shipping") for line in lines)
    if manifest.precision != "fp32":
        assert manifest.accuracy_gate is not None and manifest.accuracy_gate.passed
    assert stale_reasons(out, cpu_device) == []
    backend = create_backend(out, load_bundle(out))
    x = np.zeros((2, 3, 64, 64), dtype=np.float32)
    assert backend.infer(x).shape == (2, 10)
