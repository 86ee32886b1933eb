"""--check: every reason a bundle must not be used here, or none."""

from __future__ import annotations

from pathlib import Path

from bundle_testkit import manifest_for

from build_engine.bundle import write_bundle
from build_engine.check import Wanted, stale_reasons
from build_engine.device import DeviceInfo
from edge_agent.contract.manifest import BatchProfile, KernelInfo, TensorRTInfo


def _bundle(tmp_path: Path, backend: str = "onnxruntime", **extra: object) -> Path:
    src = tmp_path / "model.bin"
    src.write_bytes(b"model bytes" * 50)
    out = tmp_path / "bundle"
    name = "model.plan" if backend == "tensorrt" else "model.onnx"
    write_bundle(
        out,
        {name: src},
        manifest_for(backend, "fp16" if backend == "tensorrt" else "fp32", **extra),
    )
    return out


def _trt_extra() -> dict[str, object]:
    return {
        "tensorrt": TensorRTInfo(
            version="10.3.0", gpu_name="Orin", compute_capability="8.7", l4t_release="R36.4.3"
        ),
        "kernels": KernelInfo(source_sha256="c" * 64, cuda_version="12.6.68", arch="sm_87"),
    }


def test_valid_onnxruntime_bundle_has_no_reasons(tmp_path: Path, cpu_device: DeviceInfo) -> None:
    assert stale_reasons(_bundle(tmp_path), cpu_device) == []


def test_tampered_file_is_detected(tmp_path: Path, cpu_device: DeviceInfo) -> None:
    out = _bundle(tmp_path)
    with open(out / "model.onnx", "r+b") as fh:
        fh.write(b"X")
    (reason,) = stale_reasons(out, cpu_device)
    assert "sha256" in reason and "build-engine" in reason


def test_missing_bundle_is_a_reason(tmp_path: Path, cpu_device: DeviceInfo) -> None:
    (reason,) = stale_reasons(tmp_path / "nothing", cpu_device)
    assert "no bundle manifest" in reason


def test_plan_on_its_own_device_is_valid(tmp_path: Path, jetson_device: DeviceInfo) -> None:
    out = _bundle(tmp_path, "tensorrt", **_trt_extra())
    assert stale_reasons(out, jetson_device) == []


def test_plan_on_a_host_without_tensorrt(tmp_path: Path, cpu_device: DeviceInfo) -> None:
    out = _bundle(tmp_path, "tensorrt", **_trt_extra())
    reasons = stale_reasons(out, cpu_device)
    assert any("TensorRT does not import" in r for r in reasons)


def test_plan_after_a_jetpack_update(tmp_path: Path, jetson_device: DeviceInfo) -> None:
    out = _bundle(tmp_path, "tensorrt", **_trt_extra())
    updated = DeviceInfo(
        tensorrt_version="10.7.0",
        gpu_name="Orin",
        compute_capability="8.7",
        l4t_release="R36.5.0",
        dla_cores=2,
        cuda_version="12.8.1",
        nvcc="nvcc",
    )
    reasons = " | ".join(stale_reasons(out, updated))
    assert "TensorRT 10.3.0 (here 10.7.0)" in reasons
    assert "L4T R36.4.3" in reasons
    assert "CUDA 12.6.68" in reasons


def test_dla_plan_on_a_device_without_dla(tmp_path: Path, jetson_device: DeviceInfo) -> None:
    extra = _trt_extra()
    extra["tensorrt"] = TensorRTInfo(
        version="10.3.0", gpu_name="Orin", compute_capability="8.7", dla_core=1
    )
    out = _bundle(tmp_path, "tensorrt", **extra)
    nano = DeviceInfo(**{**jetson_device.__dict__, "dla_cores": 0})
    assert any("DLA core 1" in r for r in stale_reasons(out, nano))


def test_wanted_model_precision_and_profile(tmp_path: Path, jetson_device: DeviceInfo) -> None:
    out = _bundle(tmp_path, "tensorrt", **_trt_extra())
    assert (
        stale_reasons(
            out,
            jetson_device,
            Wanted(source_onnx_sha256="a" * 64, backend="tensorrt", precision="fp16"),
        )
        == []
    )
    reasons = stale_reasons(
        out,
        jetson_device,
        Wanted(
            source_onnx_sha256="b" * 64,
            backend="tensorrt",
            precision="int8",
            batch=BatchProfile(min=1, opt=4, max=4),
        ),
    )
    text = " | ".join(reasons)
    assert "built from ONNX aaaaaaaaaaaa" in text
    assert "precision is fp16, wanted int8" in text
    assert "batch profile" in text
    fallback = Wanted(backend="tensorrt", precision="int8", accept_fp16_fallback=True)
    assert stale_reasons(out, jetson_device, fallback) == []
