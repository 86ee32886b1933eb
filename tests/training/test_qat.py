"""Quantization-aware fine-tuning (training/qat.py) and build-engine taking its ONNX as it is.

A tiny run (timm's test network, 32 x 32 generated images) gets a few QAT steps; the exported
file must have symmetric Q/DQ that build-engine's own check accepts, the run's spec in its
metadata, the same outputs as the fake-quantized torch model, and must be gated against the
FP32 run it came from, never against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from training_testkit import tiny_config_values

pytest.importorskip("modelopt.torch.quantization")

from build_engine.device import DeviceInfo
from build_engine.errors import UsageError
from build_engine.export import read_metadata
from build_engine.pipeline import BuildRequest, build
from build_engine.quantize import check_qdq
from edge_agent.contract.manifest import load_bundle
from training.checkpoint import read_checkpoint_config
from training.config import make_config
from training.qat import ONNX_NAME, REPORT_NAME, QatOptions, run_qat
from training.train import train


@pytest.fixture
def cpu_device() -> DeviceInfo:
    return DeviceInfo(
        tensorrt_version=None, gpu_name=None, compute_capability=None, l4t_release=None,
        dla_cores=0, cuda_version=None, nvcc=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(easy_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qat-src") / "run"
    train(make_config(tiny_config_values(easy_folder, out, epochs=1)), echo=lambda _: None)
    return out


@pytest.fixture(scope="module")
def qat_dir(tiny_run: Path, easy_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qat") / "qat"
    options = QatOptions(
        checkpoint=tiny_run,
        data=easy_folder,
        out=out,
        epochs=1,
        max_steps=3,
        batch_size=8,
        calib_images=16,
        device="cpu",
        progress=False,
    )
    run_qat(options, echo=lambda _: None)
    return out


def test_qat_writes_a_symmetric_qdq_onnx_with_the_runs_spec(qat_dir: Path, tiny_run: Path) -> None:
    path = qat_dir / ONNX_NAME
    model = onnx.load(str(path))
    assert check_qdq(model) > 10  # zero points 0, LayerNorm/Softmax/Add not reading INT8
    meta = read_metadata(model, str(path))
    config = read_checkpoint_config(tiny_run / "best.safetensors")
    assert meta.spec == config.spec and meta.model_name == config.model
    report = json.loads((qat_dir / REPORT_NAME).read_text())
    assert report["steps"] == 3 and len(report["losses"]) == 1
    assert report["fake_quant_vs_onnx_max_abs_diff"] < 1e-3
    # only training images were used: the run's split says how many there are
    split = json.loads((tiny_run / "split.json").read_text())
    assert report["train_images"] == len(split["train"])


def test_build_engine_gates_the_qat_file_against_its_fp32_run(
    qat_dir: Path, tiny_run: Path, easy_folder: Path, tmp_path: Path, cpu_device
) -> None:
    request = BuildRequest(
        out=tmp_path / "bundle",
        onnx=qat_dir / ONNX_NAME,
        precision="int8",
        backend="onnxruntime",
        gate_data=easy_folder,
        gate_size=30,
        gate_min_images=1,
        gate_threshold=100.0,
        reference=tiny_run,
        progress=False,
    )
    lines: list[str] = []
    manifest = build(request, cpu_device, lines.append)
    assert manifest.precision == "int8"
    assert manifest.quantization.method == "qdq-qat"
    assert manifest.quantization.calibration_method == "qat"
    gate = manifest.accuracy_gate
    assert gate is not None and gate.images == 30
    # taken as it is: the shipped file is the QAT file
    assert manifest.files["model.onnx"] == manifest.source_onnx_sha256
    assert any("taken as it is" in line for line in lines)
    load_bundle(tmp_path / "bundle")


def _cpu(tmp_path: Path, **kw: object) -> BuildRequest:
    return BuildRequest(out=tmp_path / "b", backend="onnxruntime", progress=False, **kw)  # type: ignore[arg-type]


def test_a_qdq_onnx_is_never_gated_against_itself(
    qat_dir: Path, easy_folder: Path, tmp_path: Path, cpu_device
) -> None:
    onnx_path = qat_dir / ONNX_NAME
    with pytest.raises(UsageError, match="--reference"):
        build(_cpu(tmp_path, onnx=onnx_path, precision="int8", gate_data=easy_folder),
              cpu_device, lambda _: None)  # fmt: skip
    with pytest.raises(UsageError, match="--precision int8"):
        build(_cpu(tmp_path, onnx=onnx_path), cpu_device, lambda _: None)


def test_reference_must_be_the_run_qat_started_from(
    qat_dir: Path, easy_folder: Path, tmp_path: Path, cpu_device
) -> None:
    other = tmp_path / "other.onnx"
    model = onnx.load(str(qat_dir / ONNX_NAME))
    for prop in model.metadata_props:
        if prop.key == "galaxy_edge.qat":
            record = json.loads(prop.value)
            record["source_checkpoint_sha256"] = "0" * 64
            prop.value = json.dumps(record)
    onnx.save(model, str(other))
    run = Path(json.loads((qat_dir / REPORT_NAME).read_text())["source_checkpoint"])
    request = _cpu(
        tmp_path, onnx=other, precision="int8", gate_data=easy_folder, gate_min_images=1,
        reference=run,
    )  # fmt: skip
    with pytest.raises(UsageError, match="not the run"):
        build(request, cpu_device, lambda _: None)


def test_reference_is_refused_for_an_fp32_onnx(tiny_run: Path, tmp_path: Path, cpu_device) -> None:
    from build_engine.export import export_checkpoint

    fp32 = tmp_path / "fp32.onnx"
    export_checkpoint(tiny_run, fp32)
    with pytest.raises(UsageError, match="drop it"):
        build(_cpu(tmp_path, onnx=fp32, reference=tiny_run), cpu_device, lambda _: None)


def test_qat_config_leaves_layernorm_out_of_int8() -> None:
    import modelopt.torch.quantization as mtq
    import torch

    from training.qat import qat_config

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    quantized = mtq.quantize(model, qat_config(mtq), lambda m: m(x))
    enabled = {
        name.rsplit(".", 1)[0]
        for name, module in quantized.named_modules()
        if name.endswith("_quantizer") and getattr(module, "is_enabled", False)
    }
    assert enabled == {"0", "2"}  # both Linear layers, not the LayerNorm ("1")
