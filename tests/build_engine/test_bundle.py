"""Bundles are written whole or not at all, verified on load, and keyed by what built them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from build_engine.bundle import cache_key, check_output_dir, write_bundle, write_file_atomic
from build_engine.errors import BundleError, UsageError
from edge_agent.contract.errors import ManifestError
from edge_agent.contract.manifest import (
    TensorRTInfo,
    load_bundle,
    sha256_file,
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "src.onnx"
    path.write_bytes(b"not really onnx, the bundle does not care" * 10)
    return path


def test_written_bundle_verifies(tmp_path: Path, model_file: Path, make_manifest) -> None:
    out = tmp_path / "deep" / "bundle"
    written = write_bundle(out, {"model.onnx": model_file}, make_manifest())
    assert load_bundle(out) == written
    assert written.files["model.onnx"] == sha256_file(model_file)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert [p.name for p in out.parent.iterdir()] == ["bundle"]  # no staging left
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_rewrite_replaces_an_existing_bundle(
    tmp_path: Path, model_file: Path, make_manifest
) -> None:
    out = tmp_path / "bundle"
    write_bundle(out, {"model.onnx": model_file}, make_manifest())
    (out / "stale-extra.bin").write_bytes(b"x")
    write_bundle(out, {"model.onnx": model_file}, make_manifest(precision="int8"))
    assert load_bundle(out).precision == "int8"
    assert not (out / "stale-extra.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "src.onnx"]


def test_failure_leaves_nothing_behind(tmp_path: Path, model_file: Path, make_manifest) -> None:
    parent = tmp_path / "new-parent"
    with pytest.raises(BundleError):
        write_bundle(parent / "bundle", {"model.onnx": tmp_path / "missing.onnx"}, make_manifest())
    assert not parent.exists()  # the parent created for it is gone too


def test_missing_model_file_in_manifest_fails_cleanly(
    tmp_path: Path, model_file: Path, make_manifest
) -> None:
    with pytest.raises(ManifestError):
        write_bundle(tmp_path / "b", {"other.onnx": model_file}, make_manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]


def test_old_bundle_survives_a_failed_rebuild(
    tmp_path: Path, model_file: Path, make_manifest
) -> None:
    out = tmp_path / "bundle"
    write_bundle(out, {"model.onnx": model_file}, make_manifest())
    with pytest.raises(BundleError):
        write_bundle(out, {"model.onnx": tmp_path / "missing"}, make_manifest(precision="fp16"))
    assert load_bundle(out).precision == "fp32"


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(
    tmp_path: Path, model_file: Path, make_manifest
) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(UsageError, match="not a bundle"):
        write_bundle(precious, {"model.onnx": model_file}, make_manifest())
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_output_under_a_file_is_refused(tmp_path: Path, model_file: Path) -> None:
    with pytest.raises(UsageError, match="is a file"):
        check_output_dir(model_file / "bundle")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot be tested")
def test_unwritable_parent_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UsageError, match="not writable"):
        check_output_dir(ro / "bundle")


def test_cache_key_changes_with_what_determines_the_build(make_manifest) -> None:
    trt = TensorRTInfo(version="10.3.0", gpu_name="Orin", compute_capability="8.7")
    base = make_manifest("tensorrt", "fp16", tensorrt=trt)
    same = make_manifest("tensorrt", "fp16", tensorrt=trt, created="2030-01-01T00:00:00+00:00")
    assert cache_key(base) == cache_key(same)
    for changed in (
        make_manifest("tensorrt", "int8", tensorrt=trt),
        make_manifest("tensorrt", "fp16", tensorrt=trt.model_copy(update={"version": "10.4.0"})),
        make_manifest("tensorrt", "fp16", tensorrt=trt.model_copy(update={"dla_core": 0})),
        make_manifest("tensorrt", "fp16", tensorrt=trt, source_onnx_sha256="b" * 64),
        make_manifest(
            "tensorrt",
            "fp16",
            tensorrt=trt,
            preprocess=base.preprocess.model_copy(update={"crop": "none"}),
        ),
    ):
        assert cache_key(changed) != cache_key(base)


def test_a_failed_file_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan or timing cache is whole or absent (write_file_atomic)."""
    path = tmp_path / "model.plan"
    write_file_atomic(path, memoryview(b"old plan"))
    assert path.read_bytes() == b"old plan"

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_file_atomic(path, b"new plan")
    monkeypatch.undo()
    assert path.read_bytes() == b"old plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.plan"]
