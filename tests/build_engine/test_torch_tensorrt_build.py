"""``build-engine --plan-builder torch-tensorrt`` against fake torch_tensorrt and TensorRT modules.

torch-tensorrt installs only from NVIDIA's index, so it is faked: the fake records the compile
call (the ExportedProgram, the precisions, the dynamic input shapes) and returns engine bytes.
The fake TensorRT deserializes them into an engine whose execution context really reads the
input tensor and writes the output tensor through the addresses the gate gives it, computing
the logits with ONNX Runtime on the FP32 reference (or a broken constant), so the gate's
engine runner is exercised for real on CPU tensors. torch.export itself is real (the tiny
MobileViT, batch dynamic).
"""

from __future__ import annotations

import ctypes
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_testkit import FakeLoaded

from build_engine.cli import main
from build_engine.device import DeviceInfo
from build_engine.errors import AccuracyGateError, PrecisionError, UsageError
from build_engine.pipeline import build
from build_engine.request import BuildRequest
from edge_agent.contract import exit_codes
from edge_agent.contract.manifest import (
    BatchProfile,
    Calibration,
    TrainingProvenance,
    load_bundle,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC
from training.weights import record_weights

torch = pytest.importorskip("torch")
ENGINE = b"serialized engine from the fake torch-tensorrt"
CALIBRATION = Calibration(
    temperature=1.3, fitted_on="validation split", images=50, ece_before=0.1, ece_after=0.05
)


def fake_torch_tensorrt(calls: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType("torch_tensorrt")
    module.__version__ = "2.5.0"  # type: ignore[attr-defined]

    class Input:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    def convert(program: Any, **kwargs: Any) -> bytes:
        calls["program"] = program
        calls.update(kwargs)
        return ENGINE

    module.Input = Input  # type: ignore[attr-defined]
    module.dynamo = types.SimpleNamespace(  # type: ignore[attr-defined]
        convert_exported_program_to_serialized_trt_engine=convert
    )
    return module


def fake_tensorrt(logits_of: Callable[[np.ndarray], np.ndarray], seen: dict[str, Any]) -> Any:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
        Severity = int

        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self) -> None:
            self.shape: tuple[int, ...] = ()
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            assert name == "x"
            self.shape = tuple(shape)
            seen.setdefault("shapes", []).append(self.shape)
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            count = int(np.prod(self.shape))
            buffer = (ctypes.c_float * count).from_address(self.addresses["x"])
            images = np.ctypeslib.as_array(buffer).reshape(self.shape).copy()
            logits = np.ascontiguousarray(logits_of(images), dtype=np.float32)
            ctypes.memmove(self.addresses["output0"], logits.ctypes.data, logits.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["x", "output0"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "x" else "out"

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            seen["deserialized"] = data
            return Engine() if data == ENGINE else None

    trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.Logger = ILogger  # type: ignore[attr-defined]
    trt.Builder = object  # type: ignore[attr-defined]  # what import_tensorrt looks for
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]
    trt.DataType = types.SimpleNamespace(FLOAT="float", HALF="half")  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def rig(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_torch_model: Any
) -> Iterator[dict[str, Any]]:
    """A verified run directory, fake training loader, torch_tensorrt and tensorrt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"weights")
    record_weights(run / "best.safetensors")
    loaded = FakeLoaded(
        tiny_torch_model,
        "mobilevit_xxs",
        10,
        64,
        TrainingProvenance(dataset="synthetic", split_seed=1, checkpoint_sha256="c" * 64),
        DEFAULT_SPEC.model_copy(update={"input_size": 64}),
        CALIBRATION,
    )
    training = types.ModuleType("training.checkpoint")
    training.load_for_export = lambda path: loaded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.checkpoint", training)
    calls: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    state: dict[str, Any] = {"calls": calls, "seen": seen, "run": run, "logits": None}

    def logits_of(images: np.ndarray) -> np.ndarray:
        fn = state["logits"]
        assert fn is not None, "set rig['logits'] before a gated build"
        result: np.ndarray = fn(images)
        return result

    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake_torch_tensorrt(calls))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(logits_of, seen))
    sys.modules.pop("edge_agent.backends.tensorrt_common", None)

    def compile_kernels(out_dir: Path, arch: str | None = None) -> Any:
        from edge_agent.contract.manifest import KernelInfo

        (out_dir / "preprocess.cubin").write_bytes(b"cubin")
        return KernelInfo(source_sha256="d" * 64, cuda_version="12.6", arch=arch or "sm_87",
                          cubin="preprocess.cubin")  # fmt: skip

    monkeypatch.setattr("build_engine.kernels.compile_kernels", compile_kernels)
    import build_engine.torch_tensorrt_build as module

    original = module.build_with_torch_tensorrt
    monkeypatch.setattr(
        module,
        "build_with_torch_tensorrt",
        lambda request, device, log: original(request, device, log, torch_device="cpu"),
    )
    yield state
    sys.modules.pop("edge_agent.backends.tensorrt_common", None)


def _request(rig: dict[str, Any], tmp_path: Path, **kw: Any) -> BuildRequest:
    values: dict[str, Any] = {
        "out": tmp_path / "bundle",
        "checkpoint": rig["run"],
        "plan_builder": "torch-tensorrt",
        "batch": BatchProfile(min=1, opt=4, max=8),
        "workspace_mb": 64,
        "progress": False,
    }
    values.update(kw)
    return BuildRequest(**values)


def test_fp16_engine_compiled_with_dynamic_batch_into_the_same_bundle(
    rig: dict[str, Any], tmp_path: Path, jetson_device: DeviceInfo
) -> None:
    lines: list[str] = []
    manifest = build(
        _request(rig, tmp_path, timing_cache=tmp_path / "cache.bin"), jetson_device, lines.append
    )
    calls = rig["calls"]
    assert calls["enabled_precisions"] == {torch.float16, torch.float32}
    (spec,) = calls["inputs"]
    assert spec.kwargs == {
        "min_shape": (1, 3, 64, 64),
        "opt_shape": (4, 3, 64, 64),
        "max_shape": (8, 3, 64, 64),
        "dtype": torch.float32,
    }
    assert calls["workspace_size"] == 64 << 20
    assert calls["timing_cache_path"] == str(tmp_path / "cache.bin")
    program = calls["program"]
    assert isinstance(program, torch.export.ExportedProgram)
    # the batch really is dynamic in the program: it runs at the profile's ends
    for n in (1, 8):
        assert tuple(program.module()(torch.zeros(n, 3, 64, 64)).shape) == (n, 10)
    out = tmp_path / "bundle"
    assert (out / "model.plan").read_bytes() == ENGINE
    loaded = load_bundle(out)
    assert loaded == manifest
    assert (loaded.backend, loaded.precision, loaded.model_file) == (
        "tensorrt",
        "fp16",
        "model.plan",
    )
    assert (loaded.input_name, loaded.output_name) == ("x", "output0")  # read from the engine
    assert loaded.batch == BatchProfile(min=1, opt=4, max=8)
    assert loaded.tensorrt is not None
    assert loaded.tensorrt.plan_builder == "torch-tensorrt 2.5.0"
    assert (loaded.tensorrt.version, loaded.tensorrt.gpu_name) == ("10.3.0", "Orin")
    assert loaded.tensorrt.compute_capability == "8.7"
    assert loaded.kernels is not None and "preprocess.cubin" in loaded.files
    assert loaded.calibration == CALIBRATION  # from the exported ONNX's metadata
    assert loaded.training.dataset == "synthetic" and loaded.model.name == "mobilevit_xxs"
    assert loaded.accuracy_gate is None  # no --gate-data: like the TensorRT builder's FP16
    assert len(loaded.source_onnx_sha256) == 64
    assert any("torch-tensorrt 2.5.0" in line for line in lines)
    # the staleness key is the TensorRT path's: the same device passes --check
    from build_engine.check import stale_reasons

    assert stale_reasons(out, jetson_device) == []
    other = DeviceInfo(**{**jetson_device.__dict__, "tensorrt_version": "10.4.0"})
    assert stale_reasons(out, other)


def test_fp32_enables_only_fp32(
    rig: dict[str, Any], tmp_path: Path, jetson_device: DeviceInfo
) -> None:
    manifest = build(
        _request(rig, tmp_path, precision="fp32", kernels=False), jetson_device, lambda _: None
    )
    assert rig["calls"]["enabled_precisions"] == {torch.float32}
    assert manifest.precision == "fp32" and manifest.kernels is None


def _reference(onnx_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: np.asarray(session.run(None, {name: images})[0])


def test_the_gate_runs_the_engine_itself(
    rig: dict[str, Any], tmp_path: Path, jetson_device: DeviceInfo, tiny_onnx: Path
) -> None:
    from bundle_testkit import write_labelled_set

    gate_csv = write_labelled_set(tmp_path / "gate", 24, seed=5)
    # an engine that computes what the FP32 model computes: agreement 100%, the gate passes
    # (24 images resolve nothing finer than ~10 points: the threshold is set to match)
    rig["logits"] = _reference(tiny_onnx)
    manifest = build(
        _request(
            rig,
            tmp_path,
            gate_data=gate_csv,
            gate_min_images=20,
            gate_threshold=15.0,
            kernels=False,
        ),
        jetson_device,
        lambda _: None,
    )
    gate = manifest.accuracy_gate
    assert gate is not None and gate.passed and gate.images == 24 and gate.agreement == 1.0
    assert rig["seen"]["shapes"] == [(8, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64)]

    # an engine that always answers class 3: refused, nothing written
    rig["logits"] = lambda images: np.eye(10, dtype=np.float32)[[3] * len(images)]
    with pytest.raises(AccuracyGateError):
        build(
            _request(rig, tmp_path, out=tmp_path / "b2", gate_data=gate_csv, gate_min_images=20, gate_threshold=15.0,
                     kernels=False),
            jetson_device,
            lambda _: None,
        )  # fmt: skip
    assert not (tmp_path / "b2").exists()


def test_what_this_path_refuses(
    rig: dict[str, Any], tmp_path: Path, jetson_device: DeviceInfo, tiny_onnx: Path
) -> None:
    with pytest.raises(PrecisionError, match="only fp32 and fp16"):
        build(_request(rig, tmp_path, precision="int8"), jetson_device, lambda _: None)
    with pytest.raises(UsageError, match="--checkpoint"):
        build(
            _request(rig, tmp_path, checkpoint=None, onnx=tiny_onnx), jetson_device, lambda _: None
        )
    with pytest.raises(PrecisionError, match="--dla-core"):
        build(_request(rig, tmp_path, dla_core=0), jetson_device, lambda _: None)
    with pytest.raises(UsageError, match="drop --backend"):
        build(_request(rig, tmp_path, backend="onnxruntime"), jetson_device, lambda _: None)
    assert "program" not in rig["calls"]  # refused before any compile


def test_without_torch_tensorrt_a_clear_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import raises ImportError
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"weights")
    record_weights(run / "best.safetensors")
    code = main(["--checkpoint", str(run), "--out", str(tmp_path / "b"),
                 "--plan-builder", "torch-tensorrt"])  # fmt: skip
    assert code == exit_codes.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NVIDIA's package index" in err[0]
    assert "--plan-builder tensorrt" in err[0]
    assert not (tmp_path / "b").exists()
