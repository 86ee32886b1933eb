"""ONNX export: faithful to PyTorch, checked, simplified, and bad files named in one line."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from bundle_testkit import FakeLoaded

from build_engine.errors import ExportError
from build_engine.export import (
    EXPORT_ATOL,
    EXPORT_RTOL,
    EXPORT_STEPS,
    describe_onnx,
    export_checkpoint,
    export_module,
    load_onnx,
    run_onnx,
)
from build_engine.onnx_metadata import read_metadata
from edge_agent.contract.decode_config import DecodeSpec, StretchConfig
from edge_agent.contract.manifest import TrainingProvenance
from edge_agent.contract.preprocess import PreprocessSpec

NON_DEFAULT_SPEC = PreprocessSpec(input_size=64, crop="none", scale=1 / 255, offset=0.0)
NON_DEFAULT_DECODE = DecodeSpec(stretch=StretchConfig(method="percentile", low_percentile=2.0))


def test_export_at_256_matches_pytorch_with_dynamic_batch(tiny_torch_model, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.onnx"
    report = export_module(tiny_torch_model, path, input_size=256)
    assert report.info.input_size == 256
    assert report.info.dynamic_batch
    assert (report.info.input_name, report.info.output_name) == ("input", "logits")
    assert report.info.opset == 17
    assert report.simplified, report.simplify_note
    # Independent of export_module's own check: a batch of 5 at the production size.
    x = torch.rand((5, 3, 256, 256), generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        expected = tiny_torch_model(x).numpy()
    actual = run_onnx(path, x.numpy())
    assert actual.shape == (5, 10)
    np.testing.assert_allclose(actual, expected, atol=EXPORT_ATOL, rtol=EXPORT_RTOL)
    assert report.max_abs_diff <= EXPORT_ATOL


def test_export_refuses_a_model_that_does_not_reproduce(tmp_path: Path) -> None:
    """Python control flow on the batch size is frozen by tracing: the check must catch it."""
    torch = pytest.importorskip("torch")

    class BatchDependent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)
            )

        def forward(self, x):  # type: ignore[no-untyped-def]
            scale = 1.0 if int(x.shape[0]) == 2 else 3.0
            return self.head(x) * scale + 1.0

    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_module(BatchDependent(), tmp_path / "m.onnx", input_size=32)


def test_missing_and_corrupt_onnx_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not found") as missing:
        load_onnx(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 40)
    with pytest.raises(ExportError, match="not a valid ONNX model") as bad:
        load_onnx(corrupt)
    for info in (missing, bad):
        assert "\n" not in str(info.value)


def test_wrong_number_of_classes_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "five.onnx"
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    )
    with pytest.raises(ExportError, match=r"expected \[N, 10\]"):
        export_module(model, path, input_size=32)


def test_describe_onnx_needs_static_square_input(tiny_onnx: Path) -> None:
    model = load_onnx(tiny_onnx)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(ExportError, match="static S"):
        describe_onnx(model, "x.onnx")


def _Loaded(*args: object) -> FakeLoaded:
    """The training side of a non-default run: its spec and decode settings must travel."""
    loaded = FakeLoaded(*args)  # type: ignore[arg-type]
    loaded.spec, loaded.decode = NON_DEFAULT_SPEC, NON_DEFAULT_DECODE
    return loaded


def _fake_training(monkeypatch: pytest.MonkeyPatch, loaded: _Loaded) -> None:
    module = types.ModuleType("training.checkpoint")
    module.load_for_export = lambda path: loaded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.checkpoint", module)


def test_export_checkpoint_records_name_provenance_and_spec(
    tiny_torch_model, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"weights")
    prov = TrainingProvenance(dataset="galaxy10", split_seed=3, test_accuracy=0.8, macro_f1=0.7)
    _fake_training(monkeypatch, _Loaded(tiny_torch_model, "mobilevit_xxs", 10, 64, prov))
    steps: list[str] = []
    report = export_checkpoint(run, tmp_path / "m.onnx", step=steps.append)
    meta = read_metadata(load_onnx(tmp_path / "m.onnx"))
    assert meta.model_name == "mobilevit_xxs"
    assert meta.provenance.test_accuracy == 0.8
    assert meta.provenance.checkpoint_sha256 == report.provenance.checkpoint_sha256
    assert meta.provenance.checkpoint_sha256 is not None
    assert len(meta.provenance.checkpoint_sha256) == 64
    assert meta.parameters == report.parameters and meta.parameters > 0
    assert meta.spec == NON_DEFAULT_SPEC == report.spec
    assert meta.decode == NON_DEFAULT_DECODE == report.decode
    assert len(steps) == EXPORT_STEPS  # one progress step per stage


def test_export_checkpoint_refuses_wrong_class_count(
    tiny_torch_model, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _fake_training(
        monkeypatch, _Loaded(tiny_torch_model, "mobilevit_xxs", 7, 64, TrainingProvenance())
    )
    with pytest.raises(ExportError, match="7 classes"):
        export_checkpoint(run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_checkpoint_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "nope", tmp_path / "m.onnx")
