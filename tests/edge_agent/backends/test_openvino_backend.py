"""The OpenVINO backend: a compiled model cached in the bundle, keyed by version and CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent_testkit import make_bundle

from edge_agent.backends.base import BackendError
from edge_agent.backends.openvino_host import OpenVinoHost, cpu_isa
from edge_agent.contract.errors import ManifestError, StaleBundleError
from edge_agent.contract.manifest import (
    Manifest,
    OpenVinoInfo,
    check_openvino,
    load_bundle,
    write_manifest,
)

ov = pytest.importorskip("openvino", reason="openvino is not installed (extra [openvino])")


def test_cpu_isa_reads_the_flags_that_change_kernels(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_isa(info) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    assert cpu_isa(tmp_path / "absent") == []
    assert OpenVinoHost("1", "cpu", ["avx512_bf16"]).has_bf16
    assert not OpenVinoHost("1", "cpu", ["avx2", "avx512f"]).has_bf16


def _openvino_bundle(tmp_path: Path, hint: str = "f32") -> tuple[Path, Manifest]:
    from build_engine.openvino_build import openvino_host, write_compiled

    bundle = tmp_path / "ov"
    base = make_bundle(bundle)
    host = openvino_host()
    _, info = write_compiled(bundle / "model.onnx", bundle, hint, host)  # type: ignore[arg-type]
    manifest = base.model_copy(update={"backend": "openvino", "openvino": info})
    return bundle, write_manifest(bundle, manifest)


def test_bundle_loads_and_matches_onnxruntime(tmp_path: Path) -> None:
    from edge_agent.backends.factory import create_backend
    from edge_agent.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle, manifest = _openvino_bundle(tmp_path)
    assert manifest.files["model.ov.blob"]  # hashed like every bundle file
    backend = create_backend(bundle, load_bundle(bundle))
    assert backend.name == "openvino"
    ort_bundle = tmp_path / "ort"
    make_bundle(ort_bundle)
    reference = OnnxRuntimeBackend(ort_bundle, load_bundle(ort_bundle))
    x = np.random.default_rng(1).uniform(-1, 1, (5, 3, 256, 256)).astype(np.float32)
    np.testing.assert_allclose(backend.infer(x), reference.infer(x), atol=1e-4)
    big = np.concatenate([x] * 4)  # above the batch profile's max: split, same answers
    np.testing.assert_allclose(backend.infer(big)[:5], reference.infer(x), atol=1e-4)
    with pytest.raises(BackendError, match="empty batch"):
        backend.infer(x[:0])


def test_a_compiled_model_from_another_cpu_or_version_is_stale(tmp_path: Path) -> None:
    _, manifest = _openvino_bundle(tmp_path)
    info = manifest.openvino
    assert info is not None
    check_openvino(manifest, version=info.version, isa=list(reversed(info.isa)))  # same set: ok
    with pytest.raises(StaleBundleError, match=r"OpenVINO 2000\.1 \(here .*if-stale"):
        check_openvino(
            manifest.model_copy(update={"openvino": info.model_copy(update={"version": "2000.1"})}),
            version=info.version,
            isa=info.isa,
        )
    with pytest.raises(StaleBundleError, match=r"another CPU \(\+amx_int8\)"):
        check_openvino(manifest, version=info.version, isa=[*info.isa, "amx_int8"])
    with pytest.raises(StaleBundleError, match="openvino does not import"):
        check_openvino(manifest, version=None, isa=info.isa)
    with pytest.raises(ManifestError, match="without its openvino section"):
        check_openvino(manifest.model_copy(update={"openvino": None}), version="x", isa=[])


def test_the_backend_refuses_a_stale_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.backends import openvino_backend

    bundle, manifest = _openvino_bundle(tmp_path)
    assert manifest.openvino is not None
    other = OpenVinoHost(manifest.openvino.version, "other", ["avx2"])
    monkeypatch.setattr(openvino_backend, "probe", lambda: other)
    with pytest.raises(BackendError, match="if-stale"):
        openvino_backend.OpenVinoBackend(bundle, load_bundle(bundle))


def test_bf16_is_offered_only_where_the_cpu_has_it() -> None:
    from build_engine.errors import PrecisionError
    from build_engine.openvino_build import inference_precision

    assert inference_precision("bf16", OpenVinoHost("1", "x", ["amx_bf16"])) == "bf16"
    assert inference_precision("int8", OpenVinoHost("1", "x", [])) == "f32"
    with pytest.raises(PrecisionError, match="neither AMX nor AVX-512 BF16"):
        inference_precision("bf16", OpenVinoHost("1", "x", ["avx2"]))
    with pytest.raises(PrecisionError, match="fp16 is not built for OpenVINO"):
        inference_precision("fp16", OpenVinoHost("1", "x", []))


def test_openvino_info_round_trips_in_the_manifest() -> None:
    info = OpenVinoInfo(
        version="2026.4", cpu_name="Xeon", isa=["avx2"], inference_precision="bf16",
        compiled_file="model.ov.blob",
    )  # fmt: skip
    assert OpenVinoInfo.model_validate(info.model_dump()) == info


def test_streams_split_a_batch_and_give_the_same_logits(tmp_path: Path) -> None:
    """pipeline.inference_streams: parts of a batch on their own infer requests, same answers."""
    from edge_agent.backends.factory import create_backend

    bundle, _ = _openvino_bundle(tmp_path)
    one = create_backend(bundle, load_bundle(bundle), intra_op_threads=2)
    two = create_backend(bundle, load_bundle(bundle), intra_op_threads=2, streams=2)
    assert two.streams == 2 and len(two._parts) == 2  # type: ignore[attr-defined]
    x = np.random.default_rng(3).uniform(-1, 1, (5, 3, 256, 256)).astype(np.float32)
    np.testing.assert_allclose(two.infer(x), one.infer(x), atol=1e-4)
    np.testing.assert_allclose(two.infer(x[:1]), one.infer(x[:1]), atol=1e-4)
    two.warmup()
    two.close()
