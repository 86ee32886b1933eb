"""The build pipeline on a (simulated) Jetson: what reaches the TensorRT builder and the bundle.

TensorRT and nvcc for the device are not here, so ``build_plan`` and ``compile_kernels`` are
replaced by recorders with their real signatures; everything around them runs for real.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import onnx
import pytest

from build_engine.check import stale_reasons
from build_engine.device import DeviceInfo
from build_engine.errors import PrecisionError, UsageError
from build_engine.pipeline import build
from build_engine.request import TRT_NOTICE, BuildRequest
from edge_agent.contract.manifest import BatchProfile, KernelInfo, TensorRTInfo, load_bundle


@pytest.fixture
def fake_device_tools(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def build_plan(onnx_path: Path, plan_path: Path, **kwargs: Any) -> TensorRTInfo:
        model = onnx.load(str(onnx_path))
        seen["initializer_types"] = {i.data_type for i in model.graph.initializer}
        seen["op_types"] = {n.op_type for n in model.graph.node}
        seen.update(kwargs)
        plan_path.write_bytes(b"serialized plan")
        return TensorRTInfo(
            version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            l4t_release="R36.4.3",
            dla_core=kwargs["dla_core"],
            workspace_bytes=kwargs["workspace_bytes"],
        )

    def compile_kernels(out_dir: Path, arch: str | None = None) -> KernelInfo:
        seen["arch"] = arch
        (out_dir / "preprocess.cubin").write_bytes(b"cubin")
        (out_dir / "preprocess.ptx").write_text("ptx")
        return KernelInfo(
            source_sha256="d" * 64,
            cuda_version="12.6.68",
            arch=arch or "sm_87",
            cubin="preprocess.cubin",
            ptx="preprocess.ptx",
        )

    trt_module = types.ModuleType("build_engine.tensorrt_build")
    trt_module.build_plan = build_plan  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "build_engine.tensorrt_build", trt_module)
    monkeypatch.setattr("build_engine.kernels.compile_kernels", compile_kernels)
    return seen


def test_jetson_build_is_an_fp16_plan_with_kernels(
    tiny_onnx: Path, tmp_path: Path, jetson_device: DeviceInfo, fake_device_tools: dict[str, Any]
) -> None:
    lines: list[str] = []
    out = tmp_path / "bundle"
    request = BuildRequest(
        out=out,
        onnx=tiny_onnx,
        batch=BatchProfile(min=1, opt=4, max=8),
        workspace_mb=256,
        timing_cache=tmp_path / "cache.bin",
        dla_core=1,
    )
    manifest = build(request, jetson_device, lines.append)
    assert (manifest.backend, manifest.precision, manifest.model_file) == (
        "tensorrt",
        "fp16",
        "model.plan",
    )
    assert (
        onnx.TensorProto.FLOAT16 in fake_device_tools["initializer_types"]
    )  # the FP16 ONNX was built
    assert fake_device_tools["batch"] == BatchProfile(min=1, opt=4, max=8)
    assert fake_device_tools["workspace_bytes"] == 256 << 20
    assert fake_device_tools["timing_cache"] == tmp_path / "cache.bin"
    assert fake_device_tools["dla_core"] == 1 and fake_device_tools["arch"] == "sm_87"
    loaded = load_bundle(out)
    assert set(loaded.files) == {"model.plan", "preprocess.cubin", "preprocess.ptx"}
    assert loaded.tensorrt is not None and loaded.tensorrt.dla_core == 1
    assert loaded.quantization.method == "fp16-convert"
    assert TRT_NOTICE not in lines
    assert stale_reasons(out, jetson_device) == []


def test_no_kernels_when_asked(
    tiny_onnx: Path, tmp_path: Path, jetson_device: DeviceInfo, fake_device_tools
) -> None:
    request = BuildRequest(out=tmp_path / "b", onnx=tiny_onnx, kernels=False, precision="fp32")
    manifest = build(request, jetson_device, lambda _: None)
    assert manifest.kernels is None and set(manifest.files) == {"model.plan"}
    assert onnx.TensorProto.FLOAT16 not in fake_device_tools["initializer_types"]


def test_device_limits_are_checked_before_building(
    tiny_onnx: Path, tmp_path: Path, jetson_device: DeviceInfo
) -> None:
    out = tmp_path / "b"
    with pytest.raises(PrecisionError, match="has 2 DLA core"):
        build(BuildRequest(out=out, onnx=tiny_onnx, dla_core=2), jetson_device, lambda _: None)
    old_gpu = DeviceInfo(**{**jetson_device.__dict__, "compute_capability": "5.3"})
    with pytest.raises(PrecisionError, match="no fast INT8"):
        build(
            BuildRequest(out=out, onnx=tiny_onnx, precision="int8", calib_data=tmp_path),
            old_gpu,
            lambda _: None,
        )
    with pytest.raises(UsageError, match="min <= opt <= max"):
        build(
            BuildRequest(out=out, onnx=tiny_onnx, batch=BatchProfile(min=4, opt=2, max=8)),
            jetson_device,
            lambda _: None,
        )
    with pytest.raises(UsageError, match="needs --calib-data"):
        build(
            BuildRequest(out=out, onnx=tiny_onnx, precision="int8"), jetson_device, lambda _: None
        )
    assert not out.exists()


def test_jetson_int8_asks_for_an_fp16_remainder(
    tiny_onnx: Path,
    labelled_csv: Path,
    tmp_path: Path,
    jetson_device: DeviceInfo,
    fake_device_tools,
) -> None:
    """On TensorRT the ops outside INT8 should be FP16; ORT's quantizer cannot, and says so.

    (ModelOpt's INT8 + FP16 output itself is checked in test_quantize.py.)
    """
    request = BuildRequest(
        out=tmp_path / "b",
        onnx=tiny_onnx,
        precision="int8",
        calib_data=labelled_csv,
        calib_size=12,
        gate_size=8,
        gate_threshold=100.0,
        gate_min_images=1,
        quantizer="onnxruntime",
        calibration_method="max",
    )
    lines: list[str] = []
    manifest = build(request, jetson_device, lines.append)
    assert manifest.precision == "int8" and manifest.backend == "tensorrt"
    assert manifest.quantization.method == "qdq-onnxruntime"
    assert {"QuantizeLinear", "DequantizeLinear"} <= fake_device_tools["op_types"]
    assert any("ops outside INT8 stay FP32" in line for line in lines)
    assert manifest.accuracy_gate is not None and manifest.accuracy_gate.images == 8
