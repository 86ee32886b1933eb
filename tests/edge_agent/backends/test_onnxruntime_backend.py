from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from agent_testkit import make_bundle

from edge_agent.backends.base import BackendError
from edge_agent.backends.factory import create_backend
from edge_agent.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge_agent.contract.manifest import load_bundle, read_manifest


def test_matches_bare_onnxruntime(tiny_bundle: Path) -> None:
    backend = create_backend(tiny_bundle, load_bundle(tiny_bundle), intra_op_threads=1)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.providers == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 256, 256)).astype(np.float32)
    bare = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = bare.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(backend.infer(x), expected, rtol=1e-5, atol=1e-5)
    backend.warmup()


def test_batches_above_max_are_split(tiny_bundle: Path) -> None:
    backend = create_backend(tiny_bundle, load_bundle(tiny_bundle))
    x = np.zeros((backend.max_batch + 3, 3, 256, 256), np.float32)
    assert backend.infer(x).shape == (backend.max_batch + 3, 10)


def test_kind_mismatch_and_cuda_absent(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle)
    with pytest.raises(BackendError, match="build-engine --backend tensorrt"):
        create_backend(tiny_bundle, manifest, "tensorrt")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider"):
            create_backend(tiny_bundle, manifest, use_cuda=True)


def test_tensorrt_bundle_without_tensorrt(tmp_path: Path) -> None:
    try:
        import edge_agent.backends.tensorrt_backend  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT and pycuda import here: the missing-TensorRT error cannot occur")
    manifest = make_bundle(tmp_path / "b").model_copy(update={"backend": "tensorrt"})
    with pytest.raises(BackendError, match="onnxruntime"):
        create_backend(tmp_path / "b", manifest)


def test_unloadable_model(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(BackendError, match="cannot load"):
        create_backend(tmp_path / "b", read_manifest(tmp_path / "b"))


def test_streams_split_a_batch_into_parts_run_at_once(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline.inference_streams: same logits; a lone frame on the all-threads session."""
    manifest = load_bundle(tiny_bundle)
    one = create_backend(tiny_bundle, manifest, intra_op_threads=2)
    two = create_backend(tiny_bundle, manifest, intra_op_threads=2, streams=2)
    assert isinstance(two, OnnxRuntimeBackend) and two.streams == 2
    runs: list[tuple[str, int]] = []
    real = two._run

    def spy(session: object, feed: np.ndarray) -> np.ndarray:
        runs.append(("all" if session is two.session else "part", len(feed)))
        return real(session, feed)

    monkeypatch.setattr(two, "_run", spy)
    x = np.random.default_rng(2).uniform(-1, 1, (5, 3, 256, 256)).astype(np.float32)
    np.testing.assert_allclose(two.infer(x), one.infer(x), rtol=1e-5, atol=1e-5)
    assert sorted(runs) == [("part", 2), ("part", 3)]
    runs.clear()
    np.testing.assert_allclose(two.infer(x[:1]), one.infer(x[:1]), rtol=1e-5, atol=1e-5)
    assert runs == [("all", 1)]
    two.warmup()
    two.close()
