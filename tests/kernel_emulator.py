"""An emulated GPU for CPU hosts: flat device memory and the preprocessing kernel's contract.

Used by the tests of ``edge_agent.backends.cuda_preprocess`` (through a fake pycuda) and of
``scripts/gpu-check`` (through a fake CuPy device). The emulated kernel reads its arguments
exactly as ``build_engine/cuda/preprocess.cu`` does (device pointers, heights, widths and
pitches from device memory, one grid row per frame) and computes each frame with the CPU
reference, so everything around the real kernel (staging layout, argument order, launch
geometry, output placement, the comparison) is exercised end to end. ``bug`` plants a defect to
show that the checks catch it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edge_agent.contract.preprocess import PreprocessSpec, preprocess_frame

BUGS = (None, "ignore_pitch", "ignore_bgr", "skip_last_frame", "nudge_one_value")


class DeviceMemory:
    """Allocations at distinct, 256-aligned fake addresses; reads outside them raise."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        self._next = 1 << 32

    def alloc(self, nbytes: int) -> int:
        base = self._next
        self.blocks[base] = np.zeros(max(nbytes, 1), dtype=np.uint8)
        self._next += -(-max(nbytes, 1) // 4096) * 4096 + 4096  # a guard gap
        return base

    def free(self, base: int) -> None:
        del self.blocks[base]
        self.freed.append(base)

    def view(self, addr: int, nbytes: int) -> np.ndarray:
        for base, block in self.blocks.items():
            if base <= addr and addr + nbytes <= base + block.size:
                return block[addr - base : addr - base + nbytes]
        raise IndexError(f"emulated device: {nbytes} bytes at {addr:#x} are not allocated")


def run_kernel(
    memory: DeviceMemory,
    dtype: Any,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: tuple[Any, ...],
    bug: str | None = None,
) -> None:
    """``galaxy_preprocess_f32``/``_f16`` with args (frames, heights, widths, pitches, bgr,
    out_size, scale, offset, crop_none, out), as the CUDA source declares them."""
    frames_p, heights_p, widths_p, pitches_p, bgr, out_size, scale, offset, crop_none, out_p = args
    s = int(out_size)
    count = int(grid[1])
    if int(grid[0]) * int(block[0]) < s * s:
        raise ValueError(f"grid {grid} x block {block} does not cover {s}x{s} pixels")
    pointers = memory.view(int(frames_p), 8 * count).view(np.uint64)
    heights = memory.view(int(heights_p), 4 * count).view(np.int32)
    widths = memory.view(int(widths_p), 4 * count).view(np.int32)
    pitches = memory.view(int(pitches_p), 4 * count).view(np.int32)
    spec = PreprocessSpec(
        input_size=s,
        crop="none" if int(crop_none) else "center_square",
        scale=float(np.float32(scale)),
        offset=float(np.float32(offset)),
    )
    dtype = np.dtype(dtype)
    plane = 3 * s * s
    for n in range(count):
        if bug == "skip_last_frame" and n == count - 1:
            continue
        h, w = int(heights[n]), int(widths[n])
        pitch = 3 * w if bug == "ignore_pitch" else int(pitches[n])
        raw = memory.view(int(pointers[n]), (h - 1) * pitch + 3 * w)
        frame = np.lib.stride_tricks.as_strided(raw, (h, w, 3), (pitch, 3, 1))
        order = "BGR" if int(bgr) and bug != "ignore_bgr" else "RGB"
        value = preprocess_frame(np.ascontiguousarray(frame), spec, order).astype(dtype)
        if bug == "nudge_one_value" and n == 0:
            value.flat[0] += dtype.type(0.01)
        dst = memory.view(int(out_p) + n * plane * dtype.itemsize, plane * dtype.itemsize)
        dst.view(dtype)[:] = value.ravel()


class FakeDriver:
    """The part of ``pycuda.driver`` the agent uses, over :class:`DeviceMemory`.

    One emulated device (``name``, ``capability``); kernels launched through prepared calls run
    :func:`run_kernel`; ``cubin_loads=False`` makes cubins fail to load as on a wrong GPU and
    ``fail_alloc=True`` makes every allocation fail with out of memory.
    """

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    def __init__(
        self,
        *,
        cubin_loads: bool = True,
        fail_alloc: bool = False,
        name: str = "NVIDIA H100 80GB HBM3",
        capability: tuple[int, int] = (9, 0),
    ) -> None:
        self.memory = DeviceMemory()
        self.cubin_loads = cubin_loads
        self.fail_alloc = fail_alloc
        self.loaded: list[str] = []
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        self.context_depth = 0
        driver = self

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                self.addr = driver.memory.alloc(nbytes)

            def __int__(self) -> int:
                return self.addr

            def free(self) -> None:
                driver.memory.free(self.addr)

        class Function:
            def __init__(self, kernel: str) -> None:
                self.name = kernel
                self.format: str | None = None

            def prepare(self, fmt: str) -> None:
                self.format = fmt

            def prepared_async_call(
                self, grid: tuple[int, ...], block: tuple[int, ...], stream: Any, *args: Any
            ) -> None:
                assert self.format == "PPPPiiffiP" and len(args) == len(self.format)
                assert isinstance(stream, Stream)
                assert driver.context_depth > 0, "kernel launched without a current context"
                dtype = np.float32 if self.name.endswith("f32") else np.float16
                driver.launches.append((self.name, grid, block))
                run_kernel(driver.memory, dtype, (*grid, 1), block, tuple(args))

        class Module:
            def get_function(self, kernel: str) -> Function:
                if kernel not in ("galaxy_preprocess_f32", "galaxy_preprocess_f16"):
                    raise driver.LogicError("cuModuleGetFunction failed: named symbol not found")
                return Function(kernel)

        class Stream:
            handle = 0x5EED

            def synchronize(self) -> None:
                pass

        class Context:
            def push(self) -> None:
                driver.context_depth += 1

            @staticmethod
            def pop() -> None:
                assert driver.context_depth > 0
                driver.context_depth -= 1

        class Device:
            def __init__(self, index: int) -> None:
                assert index == 0

            @staticmethod
            def count() -> int:
                return 1

            def name(self) -> str:
                return name

            def compute_capability(self) -> tuple[int, int]:
                return capability

            def retain_primary_context(self) -> Context:
                return Context()

        self.Allocation, self.Module, self.Stream = Allocation, Module, Stream
        self.Context, self.Device = Context, Device

    def init(self) -> None:
        pass

    def module_from_file(self, path: str) -> Any:
        if path.endswith(".cubin") and not self.cubin_loads:
            raise self.LogicError("cuModuleLoad failed: device kernel image is invalid")
        self.loaded.append(Path(path).suffix)
        return self.Module()

    def mem_alloc(self, nbytes: int) -> Any:
        if self.fail_alloc:
            raise self.LogicError("cuMemAlloc failed: out of memory")
        return self.Allocation(nbytes)

    def pagelocked_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod_async(self, dest: Any, src: np.ndarray, stream: Any) -> None:
        self.memory.view(int(dest), src.nbytes)[:] = (
            np.ascontiguousarray(src).view(np.uint8).ravel()
        )

    def memcpy_dtoh_async(self, dest: np.ndarray, src: Any, stream: Any) -> None:
        dest.view(np.uint8).ravel()[:] = self.memory.view(int(src), dest.nbytes)


def install_fake_pycuda(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> FakeDriver:
    """Make ``import pycuda.driver`` give a :class:`FakeDriver` for the rest of the test."""
    driver = FakeDriver(**kw)
    package = ModuleType("pycuda")
    module = ModuleType("pycuda.driver")
    for attr in dir(driver):
        if not attr.startswith("__"):
            setattr(module, attr, getattr(driver, attr))
    package.driver = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", module)
    return driver
