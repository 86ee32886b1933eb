"""Fixtures of build-engine's tests: one tiny exported model and tiny labelled image sets.

The model is timm's ``mobilevit_xxs`` (random weights, 10 classes) at 64 x 64: the same
operator mix as the production MobileViT (Conv, MatMul, LayerNorm, Softmax, residual Add) in a
file small enough to export, quantize and gate in seconds on two shared cores. It is exported
once per session; tests copy what they modify.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_testkit import manifest_for, write_labelled_set

from build_engine.device import DeviceInfo
from edge_agent.contract.preprocess import DEFAULT_SPEC

TINY_SIZE = 64
TINY_SPEC = DEFAULT_SPEC.model_copy(update={"input_size": TINY_SIZE})


@pytest.fixture(scope="session")
def tiny_torch_model():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", num_classes=10, pretrained=False).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_torch_model) -> Path:
    from build_engine.export import export_module
    from build_engine.onnx_metadata import write_metadata
    from edge_agent.contract.decode_config import DecodeSpec
    from edge_agent.contract.manifest import TrainingProvenance

    path = tmp_path_factory.mktemp("tiny-onnx") / "mobilevit_xxs.onnx"
    report = export_module(tiny_torch_model, path, input_size=TINY_SIZE)
    write_metadata(
        path,
        "mobilevit_xxs",
        TrainingProvenance(dataset="synthetic", split_seed=1),
        report.parameters,
        TINY_SPEC,
        DecodeSpec(),
    )
    return path


@pytest.fixture(scope="session")
def bare_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_torch_model) -> Path:
    """The tiny model exported without any galaxy-edge metadata (someone else's ONNX file)."""
    from build_engine.export import export_module

    path = tmp_path_factory.mktemp("bare-onnx") / "bare.onnx"
    export_module(tiny_torch_model, path, input_size=TINY_SIZE)
    return path


@pytest.fixture(scope="session")
def labelled_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled_set(tmp_path_factory.mktemp("labelled"), 40)


@pytest.fixture
def cpu_device() -> DeviceInfo:
    return DeviceInfo(
        tensorrt_version=None,
        gpu_name=None,
        compute_capability=None,
        l4t_release=None,
        dla_cores=0,
        cuda_version=None,
        nvcc=None,
    )


@pytest.fixture
def jetson_device() -> DeviceInfo:
    return DeviceInfo(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        l4t_release="R36.4.3",
        dla_cores=2,
        cuda_version="12.6.68",
        nvcc="/usr/local/cuda/bin/nvcc",
    )


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[Path]:
    """A parent folder that must hold nothing after the test (no bundle, no staging dirs)."""
    parent = tmp_path / "out-parent"
    parent.mkdir()
    yield parent
    assert sorted(p.name for p in parent.iterdir()) == []


@pytest.fixture
def make_manifest():
    """:func:`manifest_for`: a minimal valid manifest, fields overridable."""
    return manifest_for


@pytest.fixture
def host_without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """build-engine's CLI on this host, minus OpenVINO: tests of the ONNX Runtime path must not
    have ``auto`` pick OpenVINO on an Intel CPU where the extra is installed
    (tests/build_engine/test_openvino_build.py covers that choice)."""
    import dataclasses

    from build_engine.device import probe

    host = dataclasses.replace(probe(), openvino_version=None, intel_cpu=False)
    monkeypatch.setattr("build_engine.cli.probe", lambda: host)
