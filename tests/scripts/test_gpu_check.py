"""scripts/gpu-check on a CPU host: its comparison, its sections against an emulated GPU.

The lent GPU runs the script once, so everything but CuPy itself is exercised here: the
reference comparison (against itself and against deliberately wrong outputs), the staging and
launch of every parity case through the emulated kernel, the exit status, results.json, the
timing arithmetic, the training loop (on the CPU with a tiny model), and the pydantic stand-in.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from kernel_emulator import DeviceMemory, run_kernel

from build_engine.device import find_nvcc
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def load_gpu_check() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def gc(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_gpu_check()
    # Small but still odd: 1x1, non-square both ways, pitch != 3 * width at row_align 64.
    monkeypatch.setattr(module, "FRAME_SHAPES", ((1, 1), (7, 13), (30, 41), (64, 64), (97, 60)))
    monkeypatch.setattr(module, "OUT_SIZES", (16, 9))
    monkeypatch.setattr(module, "TIMING_FRAMES", (16,))
    monkeypatch.setattr(module, "TIMING_BATCHES", (1, 3))
    return module


class _Buf:
    def __init__(self, addr: int, nbytes: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.addr, self.nbytes, self.shape, self.dtype = addr, nbytes, shape, np.dtype(dtype)


class FakeDevice:
    """gpu-check's device interface over the emulated GPU (``bug`` plants a kernel defect)."""

    def __init__(self, bug: str | None = None) -> None:
        self.memory = DeviceMemory()
        self.bug = bug
        self.launches = 0

    def arch(self) -> str:
        return "sm_90"

    def info(self) -> dict[str, Any]:
        return {
            "gpu": "Emulated H100",
            "compute_capability": "9.0",
            "multiprocessors": 1,
            "l2_bytes": 0,
            "memory_bytes": 0,
            "driver": 13000,
            "runtime": 13000,
            "cupy": "emulated",
        }

    def load(self, path: Path) -> Path:
        assert path.is_file() and path.stat().st_size > 0
        return path

    def function(self, module: Path, name: str) -> tuple[str, Any]:
        dtype = {"galaxy_preprocess_f32": np.float32, "galaxy_preprocess_f16": np.float16}[name]
        return name, dtype

    def alloc(self, nbytes: int) -> tuple[_Buf, int]:
        addr = self.memory.alloc(nbytes)
        return _Buf(addr, nbytes, (nbytes,), np.uint8), addr

    def write(self, buf: _Buf, host: np.ndarray) -> None:
        self.memory.view(buf.addr, host.nbytes)[:] = host.view(np.uint8).ravel()

    def poisoned(self, shape: tuple[int, ...], dtype: Any) -> tuple[_Buf, int]:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        addr = self.memory.alloc(nbytes)
        self.memory.view(addr, nbytes).view(dtype)[:] = np.nan
        return _Buf(addr, nbytes, shape, dtype), addr

    def launch(self, function: tuple[str, Any], grid: tuple, block: tuple, args: tuple) -> None:
        assert [type(a) for a in args] == [np.uint64] * 4 + [np.int32] * 2 + [np.float32] * 2 + [
            np.int32,
            np.uint64,
        ]
        self.launches += 1
        run_kernel(self.memory, function[1], grid, block, args, self.bug)

    def download(self, buf: _Buf) -> np.ndarray:
        return self.memory.view(buf.addr, buf.nbytes).view(buf.dtype).reshape(buf.shape).copy()

    def time_ms(self, work: Any, iters: int, warmup: int) -> list[float]:
        work()
        return [1.0 + 0.1 * i for i in range(iters)]

    def copy_work(self, nbytes: int) -> Any:
        return lambda: None


def _frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 9), (31, 17))]


def test_compare_passes_the_reference_against_itself_bit_exactly(gc: ModuleType) -> None:
    ref = preprocess_batch(_frames(), PreprocessSpec(input_size=16))
    for dtype, tol in ((np.float32, 1e-5), (np.float16, 1e-3)):
        result = gc.compare(ref.astype(dtype), ref.astype(dtype), tol)
        assert result["passed"] and result["bit_exact"] and result["bad"] == 0
        assert result["elements"] == ref.size and result["max_abs_diff"] == 0.0


def test_compare_fails_a_wrong_value_nan_poison_and_shape(gc: ModuleType) -> None:
    ref = preprocess_batch(_frames(), PreprocessSpec(input_size=16))
    wrong = ref.copy()
    wrong[1, 2, 3, 4] += 2e-5
    result = gc.compare(wrong, ref, 1e-5)
    assert not result["passed"] and result["bad"] == 1
    assert result["first_bad"]["index"] == [1, 2, 3, 4]
    poisoned = ref.copy()
    poisoned[0, 0, 0, 0] = np.nan  # an element the kernel never wrote
    result = gc.compare(poisoned, ref, 1e-5)
    assert not result["passed"] and result["nonfinite"] == 1
    assert not gc.compare(ref[:1], ref, 1e-5)["passed"]
    # fp16 rounding is inside the fp16 tolerance, one fp16 step at 1.0 is not within fp32's
    assert gc.compare(ref.astype(np.float16), ref, 1e-3)["passed"]
    assert not gc.compare(ref.astype(np.float16), ref, 1e-5)["passed"]


def test_typed_args_follow_the_kernel_signature(gc: ModuleType) -> None:
    args = gc.typed_args((1, 2, 3, 4, 1, 256, 0.5, -1.0, 0, 5), "PPPPiiffiP")
    assert [type(a) for a in args][:5] == [np.uint64] * 4 + [np.int32]
    with pytest.raises(ValueError):
        gc.typed_args((1, 2), "PPP")


needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed")


@needs_nvcc
def test_every_section_against_a_correct_emulated_gpu(gc: ModuleType, tmp_path: Path) -> None:
    device = FakeDevice()
    status = gc.run_all(device, tmp_path, iters=3, training=False, timing=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert status == 0 and results["exit_status"] == 0
    parity = results["parity"]
    # 2 modules x 2 sizes x 2 crops x 2 orders x 2 row alignments x 2 dtypes, all passed
    assert parity["checked"] == 64 and parity["failed"] == 0 and parity["passed"] is True
    assert all(c["bit_exact"] and c["nonfinite"] == 0 for c in parity["cases"])
    assert device.launches >= 64
    ptxas = results["compile"]["ptxas"]
    assert set(ptxas) == {"sm_90", "sm_87"}
    assert all(v["spill_stores"] == 0 for rep in ptxas.values() for v in rep.values())
    assert set(results["compile"]["cubin_entry_points"]) == {
        "galaxy_preprocess_f32",
        "galaxy_preprocess_f16",
    }
    rows = results["timing"]
    assert len(rows) == 1 * 2 * 2  # frame sizes x batches x dtypes
    row = next(r for r in rows if r["batch"] == 3 and r["dtype"] == "float32")
    assert row["bytes_moved"] == 3 * 16 * 16 * 3 + 3 * 3 * 256 * 256 * 4
    assert row["kernel_gbps"] == pytest.approx(row["bytes_moved"] / row["kernel_ms_median"] / 1e6)
    assert row["ratio_to_copy"] == pytest.approx(1.0)


@needs_nvcc
@pytest.mark.parametrize(
    ("bug", "should_fail"),
    [
        ("ignore_pitch", lambda c: c["row_align"] == 64),
        ("ignore_bgr", lambda c: c["order"] == "BGR"),
        ("skip_last_frame", lambda c: True),
        ("nudge_one_value", lambda c: True),
    ],
)
def test_a_wrong_kernel_fails_the_check(
    gc: ModuleType, tmp_path: Path, bug: str, should_fail: Any
) -> None:
    status = gc.run_all(FakeDevice(bug), tmp_path, iters=2, training=False, timing=False)
    parity = json.loads((tmp_path / "results.json").read_text())["parity"]
    assert status == 1
    failed = {id(c) for c in parity["cases"] if not c["passed"]}
    expected = {id(c) for c in parity["cases"] if should_fail(c)}
    # a pitch bug shows only where rows are padded (widths whose 3 * w is not a multiple of 64)
    assert failed and failed <= expected
    if bug in ("ignore_bgr", "skip_last_frame"):
        assert failed == expected


def test_a_section_that_raises_is_reported_and_fails_the_run(
    gc: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(arch: str, work: Path) -> dict[str, Any]:
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(gc, "section_compile", broken)
    status = gc.run_all(FakeDevice(), tmp_path, iters=2, training=False, timing=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert status == 1
    assert results["compile"]["error"] == "RuntimeError: nvcc exploded"
    assert "error" in results["parity"] and "env" in results and "gpu" in results["env"]


def test_training_steps_run_on_cpu_with_a_tiny_model(gc: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    torch.set_num_threads(1)
    row = gc.train_steps("cpu", "mobilevit_xxs", batch=2, size=64, steps=1, warmup=0)
    assert row["ms_per_step_median"] > 0 and np.isfinite(row["final_loss"])
    assert row["images_per_s"] == pytest.approx(2 / row["ms_per_step_median"] * 1e3)


def test_reference_imports_with_the_pydantic_stand_in() -> None:
    """The GPU image has no pydantic: the stand-in must give the very same reference output."""
    frames = _frames(3)
    want = preprocess_batch(frames, PreprocessSpec(input_size=24, crop="none"), "BGR")
    code = textwrap.dedent(
        f"""
        import sys, importlib.machinery, importlib.util
        import numpy as np
        sys.modules["pydantic"] = None  # as if not installed
        loader = importlib.machinery.SourceFileLoader("gpu_check", {str(SCRIPT)!r})
        spec = importlib.util.spec_from_loader("gpu_check", loader)
        gc = importlib.util.module_from_spec(spec)
        loader.exec_module(gc)
        print(gc.ensure_pydantic())
        import edge_agent.backends.cuda_preprocess  # imports backends.base and manifest too
        rng = np.random.default_rng(3)
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 9), (31, 17))]
        out = gc.reference(frames, 24, "none", "BGR")
        sys.stdout.write(out.tobytes().hex())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "stand-in" in done.stdout
    got = np.frombuffer(bytes.fromhex(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_main_without_cupy_exits_2(
    gc: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert gc.main(["--out", str(tmp_path)]) == 2


def test_main_outside_the_repository_says_how_to_run(
    gc: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(gc.importlib.util, "find_spec", lambda name: None)
    assert gc.main(["--out", str(tmp_path)]) == 2
    assert "PYTHONPATH=$PWD" in capsys.readouterr().err
