"""The TensorRT backend against an emulated TensorRT and pycuda (neither installs here).

The fake engine computes its "logits" from whatever lies in its input buffer on the emulated
device (per sample: the mean of channel c % 3 times c + 1), so these tests check what the backend
really does with buffers: frames preprocessed by the emulated kernel straight into the engine
input, in the engine's dtype, shapes set per batch, logits copied back, batches above the
bundle's maximum split, the device check before deserialisation, and cleanup.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernel_emulator import FakeDriver, install_fake_pycuda

from edge_agent.backends.base import BackendError
from edge_agent.contract.errors import StaleBundleError
from edge_agent.contract.manifest import (
    BatchProfile,
    KernelInfo,
    Manifest,
    ModelInfo,
    TensorRTInfo,
    official_classes,
)
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch
from edge_agent.pipeline import resolve_preprocess_device

S = 32  # a small model input keeps the emulation fast


def fake_logits(x: np.ndarray) -> np.ndarray:
    """What the fake engine computes from an N x 3 x S x S input."""
    means = x.astype(np.float64).mean(axis=(2, 3))  # N x 3
    return np.stack([means[:, c % 3] * (c + 1) for c in range(10)], axis=1).astype(np.float32)


def make_fake_trt(driver: FakeDriver, input_dtype: Any, calls: dict[str, Any]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
        Severity = int

        def __init__(self) -> None:
            pass

    class Mode:
        def __init__(self, name: str) -> None:
            self.name = name

    modes = types.SimpleNamespace(INPUT=Mode("INPUT"), OUTPUT=Mode("OUTPUT"))

    class Context:
        def __init__(self) -> None:
            self.addresses: dict[str, int] = {}
            self.shape: tuple[int, ...] | None = None

        def set_tensor_address(self, name: str, addr: int) -> bool:
            self.addresses[name] = addr
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            assert name == "input"
            self.shape = tuple(shape)
            return shape[0] <= 16

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert stream_handle == 0x5EED and driver.context_depth > 0 and self.shape
            n = self.shape[0]
            dtype = np.dtype(input_dtype)
            size = int(np.prod(self.shape)) * dtype.itemsize
            x = driver.memory.view(self.addresses["input"], size).view(dtype).reshape(self.shape)
            calls.setdefault("inputs", []).append(x.copy())
            out = driver.memory.view(self.addresses["logits"], n * 10 * 4)
            out.view(np.float32)[:] = fake_logits(x).ravel()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["input", "logits"][i]

        def get_tensor_mode(self, name: str) -> Mode:
            return modes.INPUT if name == "input" else modes.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return input_dtype if name == "input" else np.float32

        def get_tensor_shape(self, name: str) -> list[int]:
            return [-1, 3, S, S] if name == "input" else [-1, 10]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
            return [[1, 3, S, S], [8, 3, S, S], [16, 3, S, S]]

        def create_execution_context(self) -> Context:
            calls["context"] = Context()
            return calls["context"]

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            calls["deserialized"] = True
            if plan != b"PLAN":
                self.logger.log(ILogger.ERROR, "Serialization assertion magicTagRead failed")
                return None
            return Engine()

    for name, value in {
        "ILogger": ILogger,
        "Runtime": Runtime,
        "TensorIOMode": modes,
        "Builder": object,
        "nptype": lambda t: t,
    }.items():
        setattr(trt, name, value)
    return trt


def make_manifest(*, gpu: str = "NVIDIA H100 80GB HBM3", kernels: bool = True) -> Manifest:
    return Manifest(
        created=datetime.now(timezone.utc).isoformat(),
        builder="test",
        model=ModelInfo(name="fake", classes=official_classes()),
        preprocess=PreprocessSpec(input_size=S),
        backend="tensorrt",
        precision="fp16",
        model_file="model.plan",
        batch=BatchProfile(min=1, opt=4, max=4),
        source_onnx_sha256="0" * 64,
        tensorrt=TensorRTInfo(version="10.3.0", gpu_name=gpu, compute_capability="9.0"),
        kernels=(
            KernelInfo(
                source_sha256="0" * 64,
                cuda_version="12.6",
                arch="sm_90",
                cubin="preprocess.cubin",
                ptx="preprocess.ptx",
            )
            if kernels
            else None
        ),
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "model.plan").write_bytes(b"PLAN")
    (tmp_path / "preprocess.cubin").write_bytes(b"\x7fELF")
    (tmp_path / "preprocess.ptx").write_text("// ptx")
    return tmp_path


@pytest.fixture
def backend_env(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., tuple[Any, FakeDriver, dict[str, Any]]]]:
    """Import tensorrt_backend against the fakes; returns (module, driver, recorded calls)."""

    def load(input_dtype: Any = np.float16) -> tuple[Any, FakeDriver, dict[str, Any]]:
        driver = install_fake_pycuda(monkeypatch)
        calls: dict[str, Any] = {}
        monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(driver, input_dtype, calls))
        sys.modules.pop("edge_agent.backends.tensorrt_backend", None)
        sys.modules.pop("edge_agent.backends.tensorrt_common", None)
        return importlib.import_module("edge_agent.backends.tensorrt_backend"), driver, calls

    yield load
    sys.modules.pop("edge_agent.backends.tensorrt_backend", None)
    sys.modules.pop("edge_agent.backends.tensorrt_common", None)


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (7, 13), (40, 31), (64, 64), (50, 90), (33, 33)]
    return [rng.integers(0, 256, (*shapes[i % 6], 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("input_dtype", [np.float16, np.float32])
def test_frames_are_preprocessed_on_the_device_into_the_engine_input(
    backend_env: Callable[..., Any], bundle: Path, input_dtype: Any
) -> None:
    module, driver, calls = backend_env(input_dtype)
    backend = module.TensorRTBackend(bundle, make_manifest())
    assert backend.preprocesses_on_device
    assert resolve_preprocess_device(backend, "auto") == "cuda"
    frames = _frames(3)
    result = backend.infer_frames(frames, "BGR")
    spec = PreprocessSpec(input_size=S)
    want_input = preprocess_batch(frames, spec, "BGR", dtype=input_dtype)
    np.testing.assert_array_equal(calls["inputs"][-1], want_input)
    np.testing.assert_array_equal(result.logits, fake_logits(want_input))
    assert set(result.timings) == {"preprocess", "infer"}
    kernel = "galaxy_preprocess_f16" if input_dtype is np.float16 else "galaxy_preprocess_f32"
    assert driver.launches[-1][0] == kernel
    assert calls["context"].shape == (3, 3, S, S) and driver.context_depth == 0
    backend.close()


def test_infer_uploads_a_preprocessed_batch_and_splits_above_max(
    backend_env: Callable[..., Any], bundle: Path
) -> None:
    module, _driver, calls = backend_env(np.float32)
    backend = module.TensorRTBackend(bundle, make_manifest())
    x = np.random.default_rng(1).uniform(-1, 1, (6, 3, S, S)).astype(np.float32)
    logits = backend.infer(x)
    assert logits.shape == (6, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, fake_logits(x), rtol=1e-6)
    assert [len(i) for i in calls["inputs"]] == [4, 2]  # max batch 4
    result = backend.infer_frames(_frames(5), "RGB")
    assert result.logits.shape == (5, 10) and [len(i) for i in calls["inputs"][-2:]] == [4, 1]
    with pytest.raises(BackendError, match="expected N x 3"):
        backend.infer(np.zeros((1, 3, S + 1, S + 1), np.float32))
    backend.close()


def test_a_plan_for_another_gpu_is_refused_before_deserialising(
    backend_env: Callable[..., Any], bundle: Path
) -> None:
    module, _, calls = backend_env()
    with pytest.raises(StaleBundleError, match="run build-engine on this device"):
        module.TensorRTBackend(bundle, make_manifest(gpu="Orin"))
    assert "deserialized" not in calls


def test_an_unreadable_plan_names_tensorrts_reason_and_frees_everything(
    backend_env: Callable[..., Any], bundle: Path
) -> None:
    module, driver, _ = backend_env()
    (bundle / "model.plan").write_bytes(b"garbage")
    with pytest.raises(BackendError, match="magicTagRead failed"):
        module.TensorRTBackend(bundle, make_manifest())
    assert driver.memory.blocks == {} and driver.context_depth == 0


def test_close_frees_the_buffers_once_and_then_refuses_work(
    backend_env: Callable[..., Any], bundle: Path
) -> None:
    module, driver, _ = backend_env()
    backend = module.TensorRTBackend(bundle, make_manifest())
    backend.warmup()
    assert driver.memory.blocks  # engine I/O and staging buffers
    backend.close()
    backend.close()
    assert driver.memory.blocks == {} and driver.context_depth == 0
    with pytest.raises(BackendError, match="closed"):
        backend.infer(np.zeros((1, 3, S, S), np.float32))


def test_a_bundle_without_kernels_preprocesses_on_the_cpu(
    backend_env: Callable[..., Any], bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module, driver, calls = backend_env(np.float32)
    with caplog.at_level(logging.WARNING):
        backend = module.TensorRTBackend(bundle, make_manifest(kernels=False))
    assert "preprocessing on the CPU" in caplog.text
    # Declared, so the pipeline feeds it CPU tensors and reports cpu (not guessed from methods).
    assert not backend.preprocesses_on_device
    assert resolve_preprocess_device(backend, "auto") == "cpu"
    with pytest.raises(BackendError, match="without CUDA kernels"):
        resolve_preprocess_device(backend, "cuda")
    frames = _frames(2)
    result = backend.infer_frames(frames)
    want = preprocess_batch(frames, PreprocessSpec(input_size=S))
    np.testing.assert_array_equal(calls["inputs"][-1], want)
    assert driver.launches == [] and result.logits.shape == (2, 10)
    backend.close()


def test_stub_only_tensorrt_refuses_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_pycuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    for name in ("edge_agent.backends.tensorrt_backend", "edge_agent.backends.tensorrt_common"):
        sys.modules.pop(name, None)
    with pytest.raises(ImportError, match="only its type stubs"):
        importlib.import_module("edge_agent.backends.tensorrt_backend")
    for name in ("edge_agent.backends.tensorrt_backend", "edge_agent.backends.tensorrt_common"):
        sys.modules.pop(name, None)
