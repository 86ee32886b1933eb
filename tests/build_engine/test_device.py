"""Device probing: on this CPU host it finds no GPU or TensorRT and does not raise."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_engine import device
from build_engine.device import (
    DeviceInfo,
    arch_of,
    import_tensorrt,
    l4t_release,
    parse_l4t_release,
    parse_nvcc_version,
    parse_nvidia_smi,
    probe,
)

JETPACK6 = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)


def test_probe_on_a_cpu_host_returns_nones_without_raising() -> None:
    info = probe()
    assert isinstance(info, DeviceInfo)
    if info.gpu_name is not None:
        pytest.skip(f"this host has a GPU ({info.gpu_name})")
    assert info.compute_capability is None and info.arch is None
    assert info.tensorrt_version is None and info.dla_cores == 0
    if not Path("/etc/nv_tegra_release").exists():
        assert info.l4t_release is None
    if info.nvcc is not None:
        assert info.cuda_version is not None and info.cuda_version[0].isdigit()


def test_stub_only_tensorrt_does_not_count_as_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt-stubs makes ``import tensorrt`` succeed with an empty namespace package."""
    import sys
    import types

    stub = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    assert import_tensorrt() is None
    stub.__version__ = "10.3.0"  # type: ignore[attr-defined]
    stub.Builder = object  # type: ignore[attr-defined]
    assert import_tensorrt() is stub
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert import_tensorrt() is None


def test_l4t_release_from_a_sample_file(tmp_path: Path) -> None:
    sample = tmp_path / "nv_tegra_release"
    sample.write_text(JETPACK6)
    assert l4t_release(sample) == "R36.4.3"
    assert parse_l4t_release("# R35 (release), REVISION: 5.0, GCID: 1") == "R35.5.0"
    assert parse_l4t_release("garbage") is None
    assert l4t_release(tmp_path / "absent") is None


def test_nvidia_smi_and_nvcc_parsing() -> None:
    assert parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0\n") == ("NVIDIA H100 80GB HBM3", "9.0")
    assert parse_nvidia_smi("Orin (nvgpu), 8.7\n") == ("Orin", "8.7")
    assert parse_nvidia_smi("[N/A]\n") is None
    text = "Cuda compilation tools, release 12.6, V12.6.68\nBuild cuda_12.6.r12.6/compiler.1_0"
    assert parse_nvcc_version(text) == "12.6.68"
    assert parse_nvcc_version("release 12.2") == "12.2"
    assert arch_of("8.7") == "sm_87" and arch_of("10.0") == "sm_100"
    with pytest.raises(ValueError):
        arch_of("sm_87")


def test_gpu_prefers_the_driver_name_over_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_gpu_from_cuda_python", lambda: None)
    monkeypatch.setattr(device, "_gpu_from_pycuda", lambda: ("Orin", "8.7"))
    monkeypatch.setattr(device, "_gpu_from_nvidia_smi", lambda: ("Orin (nvgpu)", "8.7"))
    assert device.gpu() == ("Orin", "8.7")
    monkeypatch.setattr(device, "_gpu_from_pycuda", lambda: None)
    monkeypatch.setattr(device, "_gpu_from_nvidia_smi", lambda: None)
    assert device.gpu() == (None, None)
