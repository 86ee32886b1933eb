import json
from pathlib import Path

import pytest

from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.errors import ManifestError, StaleBundleError
from edge_agent.contract.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelInfo,
    TensorRTInfo,
    check_device,
    load_bundle,
    official_classes,
    read_manifest,
    sha256_file,
    write_manifest,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC


def _manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "created": "2026-11-26T00:00:00Z",
        "builder": "test",
        "model": ModelInfo(name="mobilevit_s", classes=official_classes()),
        "preprocess": DEFAULT_SPEC,
        "backend": "onnxruntime",
        "precision": "fp32",
        "model_file": "model.onnx",
        "source_onnx_sha256": "0" * 64,
    }
    fields.update(overrides)
    return Manifest.model_validate(fields)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    (tmp_path / "preprocess.ptx").write_text("// ptx")
    write_manifest(tmp_path, _manifest())
    return tmp_path


def test_round_trip_records_every_file_hash(bundle: Path) -> None:
    m = load_bundle(bundle)
    assert set(m.files) == {"model.onnx", "preprocess.ptx"}
    assert m.files["model.onnx"] == sha256_file(bundle / "model.onnx")
    assert m.preprocess == DEFAULT_SPEC
    assert [c.name for c in m.model.classes][:2] == ["Disturbed", "Merging"]


def test_tampered_file_is_refused_with_the_fix(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="run build-engine"):
        load_bundle(bundle)


def test_missing_file_is_refused(bundle: Path) -> None:
    (bundle / "preprocess.ptx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_bundle(bundle)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no bundle manifest"):
        read_manifest(tmp_path)


def test_unknown_key_and_version_are_refused(bundle: Path) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["surprise"] = 1
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="surprise"):
        read_manifest(bundle)
    raw.pop("surprise")
    raw["format_version"] = 99
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="format 99"):
        read_manifest(bundle)


def test_older_manifests_still_read_and_new_ones_are_version_3(bundle: Path) -> None:
    """Versions 2 and 3 only added optional sections (OpenVINO, the gate's interval,
    calibration; the decoding spec): an older manifest without ``decode`` reads as the defaults."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    assert raw["format_version"] == 3
    assert raw["decode"] == DecodeSpec().model_dump(mode="json")
    del raw["decode"]
    for version in (1, 2):
        raw["format_version"] = version
        (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
        old = read_manifest(bundle)
        assert old.format_version == version and old.decode == DecodeSpec()


def test_reordered_class_list_is_refused(bundle: Path) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["model"]["classes"] = sorted(raw["model"]["classes"], key=lambda c: c["name"])
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="official"):
        read_manifest(bundle)


def test_corrupt_json_is_refused(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(bundle)


def test_model_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="model file"):
        write_manifest(tmp_path, _manifest())


def _trt_manifest() -> Manifest:
    return _manifest(
        backend="tensorrt",
        precision="fp16",
        model_file="model.plan",
        tensorrt=TensorRTInfo(version="10.3.0", gpu_name="Orin", compute_capability="8.7"),
    )


def test_check_device_accepts_the_build_device() -> None:
    check_device(
        _trt_manifest(), tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7"
    )


@pytest.mark.parametrize(
    ("version", "gpu", "cc", "needle"),
    [
        ("10.7.0", "Orin", "8.7", "TensorRT 10.3.0"),
        ("10.3.0", "NVIDIA H100", "9.0", "compute capability"),
        (None, None, None, "does not import"),
    ],
)
def test_check_device_refuses_other_setups(
    version: str | None, gpu: str | None, cc: str | None, needle: str
) -> None:
    with pytest.raises(StaleBundleError, match=needle):
        check_device(_trt_manifest(), tensorrt_version=version, gpu_name=gpu, compute_capability=cc)


def test_onnxruntime_bundles_run_anywhere() -> None:
    check_device(_manifest(), tensorrt_version=None, gpu_name=None, compute_capability=None)
