"""TensorRT plan building.

TensorRT cannot be installed here, so most tests run ``build_plan`` against a fake ``tensorrt``
module that records what the code asks of the TensorRT 10 API (the same API pyright checks the
module against, scripts/typecheck-tensorrt). The ``tensorrt``-marked test builds a real plan
wherever TensorRT imports (on the Jetson).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from build_engine.device import import_tensorrt
from build_engine.errors import PrecisionError, TensorRTBuildError
from edge_agent.contract.manifest import BatchProfile


def make_fake_trt(
    *,
    strongly_typed: bool = True,
    gpu_fallback: bool = True,
    dla_cores: int = 0,
    input_name: str = "input",
    input_shape: tuple[int, ...] = (-1, 3, 256, 256),
    build_ok: bool = True,
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]
    calls: dict[str, Any] = {"timing_cache_loaded": [], "flags": []}
    trt.calls = calls  # type: ignore[attr-defined]

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
        Severity = int

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        def __init__(self, min_severity: int = 2) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str) -> None:
            self._v = (node, name, op, desc)

        def node(self) -> int:
            return self._v[0]

        def node_name(self) -> str:
            return self._v[1]

        def node_operator(self) -> str:
            return self._v[2]

        def desc(self) -> str:
            return self._v[3]

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, list(shape)

    class Network:
        def __init__(self, flags: int) -> None:
            calls["network_flags"] = flags
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            if Path(path).read_bytes().startswith(b"BAD"):
                self.errors = [
                    ParserError(3, "Conv_3", "Conv", "unsupported auto_pad"),
                    ParserError(7, "", "", "invalid graph"),
                ]
                return False
            self.network.inputs = [Tensor(input_name, input_shape)]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Dims(list):  # type: ignore[type-arg]
        pass

    class Profile:
        def set_shape(self, name: str, lo: Dims, opt: Dims, hi: Dims) -> None:
            calls["profile"] = (name, list(lo), list(opt), list(hi))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def __init__(self) -> None:
            self.progress_monitor: Any = None
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1
            self.cache: TimingCache | None = None

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            calls["pool"] = (pool, size)

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            calls["timing_cache_loaded"].append(bytes(data))
            return None if bytes(data) == b"CORRUPT" else TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

        def set_flag(self, flag: int) -> None:
            calls["flags"].append(flag)

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            calls["config"] = config
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.phase_start("Tactic timing", "Building engine", 3)
                assert monitor.step_complete("Tactic timing", 0)
                monitor.phase_finish("Tactic timing")
                monitor.phase_finish("Building engine")
            if not build_ok:
                self.logger.log(ILogger.ERROR, "out of workspace for the Conv_3 tactics")
                return None
            return b"PLAN-BYTES"

    class DeviceType:
        GPU, DLA = 0, 1

    class MemoryPoolType:
        WORKSPACE = 0

    flags = types.SimpleNamespace(**({"GPU_FALLBACK": 3} if gpu_fallback else {}))
    for name, value in {
        "ILogger": ILogger,
        "Logger": Logger,
        "IProgressMonitor": IProgressMonitor,
        "OnnxParser": OnnxParser,
        "Builder": Builder,
        "Dims": Dims,
        "DeviceType": DeviceType,
        "MemoryPoolType": MemoryPoolType,
        "BuilderFlag": flags,
    }.items():
        setattr(trt, name, value)
    if strongly_typed:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., types.ModuleType]]:
    """Import build_engine.tensorrt_build against a fake tensorrt; GPU facts pinned."""

    def _load(fake: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        sys.modules.pop("build_engine.tensorrt_build", None)
        sys.modules.pop("edge_agent.backends.tensorrt_common", None)
        module = importlib.import_module("build_engine.tensorrt_build")
        monkeypatch.setattr(module, "gpu", lambda: ("NVIDIA H100 80GB HBM3", "9.0"))
        monkeypatch.setattr(module, "l4t_release", lambda: "R36.4.3")
        return module

    yield _load
    sys.modules.pop("build_engine.tensorrt_build", None)
    sys.modules.pop("edge_agent.backends.tensorrt_common", None)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"ONNX")
    return path


def _build(module: types.ModuleType, onnx: Path, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "batch": BatchProfile(min=1, opt=8, max=16),
        "workspace_bytes": 1 << 30,
        "dla_core": None,
        "timing_cache": None,
    }
    args.update(kw)
    return module.build_plan(onnx, onnx.parent / "model.plan", **args)


def test_flags_are_looked_up_by_name(load: Callable[..., types.ModuleType]) -> None:
    module = load(make_fake_trt())
    assert module.network_flags() == 1 << 1
    assert module.optional_builder_flag("GPU_FALLBACK") == 3
    assert module.optional_builder_flag("FP16") is None  # gone in TensorRT 11
    module = load(make_fake_trt(strongly_typed=False, gpu_fallback=False))
    assert module.network_flags() == 0  # TensorRT 11: always strongly typed, no flag
    assert module.optional_builder_flag("GPU_FALLBACK") is None


def test_build_writes_the_plan_and_reports_the_device(
    load: Callable[..., types.ModuleType], onnx_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = make_fake_trt()
    module = load(fake)
    cache = onnx_file.parent / "timing.cache"
    info = _build(module, onnx_file, timing_cache=cache)
    assert (onnx_file.parent / "model.plan").read_bytes() == b"PLAN-BYTES"
    assert (info.version, info.gpu_name, info.compute_capability) == (
        "10.3.0",
        "NVIDIA H100 80GB HBM3",
        "9.0",
    )
    assert (info.l4t_release, info.workspace_bytes, info.dla_core) == ("R36.4.3", 1 << 30, None)
    assert info.timing_cache == str(cache)
    calls = fake.calls  # type: ignore[attr-defined]
    assert calls["network_flags"] == 2
    assert calls["profile"] == ("input", [1, 3, 256, 256], [8, 3, 256, 256], [16, 3, 256, 256])
    assert calls["pool"] == (0, 1 << 30)
    assert calls["flags"] == []  # no precision flags: the ONNX types are the precision
    assert cache.read_bytes() == b"+timings"
    err = capsys.readouterr().err
    assert "Building engine: started (2 steps)" in err and "Tactic timing: done" in err
    # the second build starts from the saved cache
    _build(module, onnx_file, timing_cache=cache)
    assert calls["timing_cache_loaded"][-1] == b"+timings"
    assert not [p for p in onnx_file.parent.iterdir() if p.name.startswith(".")]


def test_an_unusable_timing_cache_is_replaced_not_fatal(
    load: Callable[..., types.ModuleType], onnx_file: Path
) -> None:
    fake = make_fake_trt()
    module = load(fake)
    cache = onnx_file.parent / "timing.cache"
    cache.write_bytes(b"CORRUPT")
    _build(module, onnx_file, timing_cache=cache, progress=False)
    assert fake.calls["timing_cache_loaded"] == [b"CORRUPT", b""]  # type: ignore[attr-defined]
    assert cache.read_bytes() == b"+timings"


def test_parser_errors_are_reported_one_per_line(
    load: Callable[..., types.ModuleType], onnx_file: Path
) -> None:
    module = load(make_fake_trt())
    onnx_file.write_bytes(b"BAD")
    with pytest.raises(TensorRTBuildError) as info:
        _build(module, onnx_file)
    lines = str(info.value).splitlines()
    assert lines[0].endswith("TensorRT's ONNX parser failed:")
    assert lines[1:] == ["node 3 'Conv_3' (Conv): unsupported auto_pad", "node 7: invalid graph"]
    assert not (onnx_file.parent / "model.plan").exists()


def test_a_failed_build_names_the_reason_and_leaves_no_plan(
    load: Callable[..., types.ModuleType], onnx_file: Path
) -> None:
    module = load(make_fake_trt(build_ok=False))
    with pytest.raises(TensorRTBuildError, match="out of workspace for the Conv_3 tactics"):
        _build(module, onnx_file, progress=False)
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]


def test_dla_core_with_gpu_fallback(load: Callable[..., types.ModuleType], onnx_file: Path) -> None:
    fake = make_fake_trt(dla_cores=2)
    module = load(fake)
    info = _build(module, onnx_file, dla_core=1, progress=False)
    config = fake.calls["config"]  # type: ignore[attr-defined]
    assert (config.default_device_type, config.DLA_core) == (1, 1)
    assert fake.calls["flags"] == [3] and info.dla_core == 1  # type: ignore[attr-defined]


def test_dla_the_device_lacks_is_refused(
    load: Callable[..., types.ModuleType], onnx_file: Path
) -> None:
    module = load(make_fake_trt(dla_cores=0))
    with pytest.raises(PrecisionError, match="has 0 DLA core"):
        _build(module, onnx_file, dla_core=0)
    module = load(make_fake_trt(dla_cores=2, gpu_fallback=False))
    with pytest.raises(PrecisionError, match="no GPU_FALLBACK"):
        _build(module, onnx_file, dla_core=0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"input_shape": (1, 3, 256, 256)}, "static batch of 1"),
        ({"input_shape": (-1, 3, -1, -1)}, "only the batch dynamic"),
        ({"input_name": "images"}, "no input named 'input'"),
    ],
)
def test_onnx_inputs_that_cannot_take_the_profile(
    load: Callable[..., types.ModuleType], onnx_file: Path, kw: dict[str, Any], message: str
) -> None:
    module = load(make_fake_trt(**kw))
    with pytest.raises(TensorRTBuildError, match=message):
        _build(module, onnx_file)


def test_the_profile_goes_on_the_input_the_graph_names(
    load: Callable[..., types.ModuleType], onnx_file: Path
) -> None:
    fake = make_fake_trt(input_name="images")
    _build(load(fake), onnx_file, input_name="images")
    assert fake.calls["profile"][0] == "images"  # type: ignore[attr-defined]


def test_bad_arguments(load: Callable[..., types.ModuleType], onnx_file: Path) -> None:
    module = load(make_fake_trt())
    with pytest.raises(TensorRTBuildError, match="no such ONNX"):
        _build(module, onnx_file.parent / "absent.onnx")
    with pytest.raises(TensorRTBuildError, match="min <= opt <= max"):
        _build(module, onnx_file, batch=BatchProfile(min=4, opt=2, max=8))


def test_stub_only_tensorrt_refuses_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    for name in ("build_engine.tensorrt_build", "edge_agent.backends.tensorrt_common"):
        sys.modules.pop(name, None)
    with pytest.raises(ImportError, match="only its type stubs"):
        importlib.import_module("build_engine.tensorrt_build")
    for name in ("build_engine.tensorrt_build", "edge_agent.backends.tensorrt_common"):
        sys.modules.pop(name, None)


@pytest.mark.tensorrt
def test_real_tensorrt_builds_a_plan_from_a_tiny_onnx(tmp_path: Path) -> None:
    if import_tensorrt() is None:
        pytest.skip("TensorRT does not import here (it comes with JetPack on the device)")
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((10, 3, 3, 3), np.float32) / 27, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weight],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    from build_engine.tensorrt_build import build_plan

    cache = tmp_path / "timing.cache"
    info = build_plan(
        path,
        tmp_path / "model.plan",
        batch=BatchProfile(min=1, opt=2, max=4),
        workspace_bytes=1 << 28,
        dla_core=None,
        timing_cache=cache,
        progress=False,
    )
    assert (tmp_path / "model.plan").stat().st_size > 0 and cache.stat().st_size > 0
    assert info.version == import_tensorrt().__version__  # type: ignore[union-attr]
