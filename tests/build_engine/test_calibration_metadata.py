"""The temperature of a calibrated model: checkpoint -> ONNX metadata -> bundle manifest."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
from bundle_testkit import FakeLoaded

from build_engine.calibration_metadata import (
    META_CALIBRATION,
    read_calibration_metadata,
    write_calibration_metadata,
)
from build_engine.device import DeviceInfo
from build_engine.errors import ExportError
from build_engine.export import export_checkpoint, load_onnx
from build_engine.pipeline import build
from build_engine.request import BuildRequest
from edge_agent.contract.manifest import Calibration, TrainingProvenance, load_bundle
from edge_agent.contract.preprocess import DEFAULT_SPEC

RECORD = Calibration(
    temperature=1.6,
    fitted_on="validation split of labels.csv",
    images=100,
    ece_before=0.12,
    ece_after=0.05,
)


def test_the_record_round_trips_in_the_onnx_and_none_removes_it(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, path)
    assert read_calibration_metadata(load_onnx(path), str(path)) is None
    write_calibration_metadata(path, RECORD)
    write_calibration_metadata(path, RECORD)  # idempotent: one entry
    model = load_onnx(path)
    assert [p.key for p in model.metadata_props].count(META_CALIBRATION) == 1
    assert read_calibration_metadata(model, str(path)) == RECORD
    write_calibration_metadata(path, None)
    assert read_calibration_metadata(load_onnx(path), str(path)) is None


def test_a_record_that_does_not_validate_is_an_error(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_CALIBRATION, '{"temperature": -1}'
    with pytest.raises(ExportError, match="not a valid calibration record"):
        read_calibration_metadata(model, "m.onnx")


@pytest.mark.parametrize("calibrated", [True, False])
def test_the_bundle_manifest_carries_what_the_onnx_says(
    tiny_onnx: Path, tmp_path: Path, cpu_device: DeviceInfo, calibrated: bool
) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, path)
    write_calibration_metadata(path, RECORD if calibrated else None)
    lines: list[str] = []
    manifest = build(BuildRequest(out=tmp_path / "b", onnx=path), cpu_device, lines.append)
    assert manifest.calibration == (RECORD if calibrated else None)
    assert load_bundle(tmp_path / "b").calibration == manifest.calibration
    said = [line for line in lines if line.startswith("calibration:")]
    assert said and ("1.6000" in said[0]) == calibrated


def test_export_checkpoint_writes_the_checkpoints_record(
    tiny_torch_model: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = FakeLoaded(
        tiny_torch_model,
        "mobilevit_xxs",
        10,
        64,
        TrainingProvenance(checkpoint_sha256="c" * 64),
        DEFAULT_SPEC.model_copy(update={"input_size": 64}),
        RECORD,
    )
    module = types.ModuleType("training.checkpoint")
    module.load_for_export = lambda path: loaded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.checkpoint", module)
    run = tmp_path / "run"
    run.mkdir()
    export_checkpoint(run, tmp_path / "m.onnx")
    assert read_calibration_metadata(load_onnx(tmp_path / "m.onnx"), "m.onnx") == RECORD
