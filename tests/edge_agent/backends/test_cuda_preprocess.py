"""GPU preprocessing: the staging layout, and the pycuda launcher against an emulated driver.

The emulated driver (``FakeDriver``) keeps device memory in NumPy and runs the kernel's
contract through the CPU reference (tests/kernel_emulator.py), so the launcher's upload, its
argument order, launch geometry, buffer growth, PTX fallback and error mapping are all checked
here. The real kernel on a real GPU is the ``gpu``-marked test at the end (and scripts/gpu-check).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernel_emulator import FakeDriver, install_fake_pycuda

from edge_agent.backends.base import BackendError
from edge_agent.backends.cuda_preprocess import (
    ALIGN,
    CudaPreprocessor,
    check_spec,
    fill_staging,
    kernel_args,
    launch_geometry,
    staging_layout,
)
from edge_agent.contract.errors import PreprocessError
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess_batch


def _frames(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_layout_aligns_every_region_and_pads_rows() -> None:
    layout = staging_layout([(3, 5), (1, 1), (2, 64)], row_align=16)
    offsets = [
        layout.pointers_offset,
        layout.heights_offset,
        layout.widths_offset,
        layout.pitches_offset,
        *layout.frame_offsets,
    ]
    assert all(o % ALIGN == 0 for o in offsets) and offsets == sorted(set(offsets))
    assert layout.pitches == (16, 16, 192) and layout.heights == (3, 1, 2)
    assert layout.nbytes >= layout.frame_offsets[-1] + 2 * 192
    assert staging_layout([(3, 5)]).pitches == (15,)  # packed rows by default


def test_layout_refuses_empty_batches_and_empty_frames() -> None:
    with pytest.raises(BackendError, match="empty batch"):
        staging_layout([])
    with pytest.raises(BackendError, match="no area"):
        staging_layout([(0, 4)])


def test_fill_staging_writes_metadata_and_rows_and_leaves_padding() -> None:
    frames = _frames([(3, 5), (4, 2)])
    frames[1] = frames[1][:, ::-1]  # a non-contiguous view is copied row by row
    layout = staging_layout([f.shape[:2] for f in frames], row_align=32)
    dest = np.full(layout.nbytes, 0xAB, dtype=np.uint8)
    fill_staging(dest, layout, frames, device_base=0x1000)
    n = layout.count
    ptrs = dest[layout.pointers_offset : layout.pointers_offset + 8 * n].view(np.uint64)
    assert list(ptrs) == [0x1000 + o for o in layout.frame_offsets]
    assert list(dest[layout.widths_offset :][: 4 * n].view(np.int32)) == [5, 2]
    assert list(dest[layout.pitches_offset :][: 4 * n].view(np.int32)) == [32, 32]
    for frame, off in zip(frames, layout.frame_offsets, strict=True):
        h, w = frame.shape[:2]
        rows = dest[off : off + h * 32].reshape(h, 32)
        np.testing.assert_array_equal(rows[:, : 3 * w].reshape(h, w, 3), frame)
        assert (rows[:, 3 * w :] == 0xAB).all()


def test_fill_staging_rejects_mismatches() -> None:
    frames = _frames([(3, 5)])
    layout = staging_layout([(3, 5)])
    with pytest.raises(BackendError, match="smaller"):
        fill_staging(np.zeros(8, np.uint8), layout, frames, 0)
    with pytest.raises(BackendError, match="layout says"):
        fill_staging(np.zeros(layout.nbytes, np.uint8), layout, _frames([(5, 3)]), 0)


def test_launch_geometry_and_arguments() -> None:
    grid, block = launch_geometry(4, 97)
    assert grid == (-(-97 * 97 // 256), 4, 1) and block == (256, 1, 1)
    layout = staging_layout([(3, 5)])
    args = kernel_args(layout, 1000, "BGR", PreprocessSpec(input_size=97, crop="none"))
    assert args[:4] == (
        1000 + layout.pointers_offset,
        1000 + layout.heights_offset,
        1000 + layout.widths_offset,
        1000 + layout.pitches_offset,
    )
    assert args[4:6] == (1, 97) and args[8] == 1
    assert args[6] == float(np.float32(1 / 127.5)) and args[7] == -1.0
    assert kernel_args(layout, 0, "RGB", DEFAULT_SPEC)[4] == 0
    assert kernel_args(layout, 0, "RGB", DEFAULT_SPEC)[8] == 0


def test_check_spec_refuses_a_transform_the_kernel_does_not_implement() -> None:
    check_spec(DEFAULT_SPEC)
    with pytest.raises(BackendError, match="rebuild"):
        check_spec(PreprocessSpec.model_construct(interpolation="area"))  # type: ignore[arg-type]


@pytest.fixture
def fake_pycuda(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An emulated pycuda (tests/kernel_emulator.py) with its context current, as the backend does."""

    def install(**kw: Any) -> FakeDriver:
        driver = install_fake_pycuda(monkeypatch, **kw)
        driver.Device(0).retain_primary_context().push()
        return driver

    return install


def _bundle(tmp_path: Path) -> tuple[Path, Path]:
    cubin, ptx = tmp_path / "preprocess.cubin", tmp_path / "preprocess.ptx"
    cubin.write_bytes(b"\x7fELF")
    ptx.write_text("// ptx")
    return cubin, ptx


@pytest.mark.parametrize(
    ("dtype", "order", "crop"), [(np.float32, "RGB", "center_square"), (np.float16, "BGR", "none")]
)
def test_launcher_output_equals_the_reference(
    fake_pycuda: Any, tmp_path: Path, dtype: Any, order: str, crop: str
) -> None:
    driver = fake_pycuda()
    spec = PreprocessSpec(input_size=24, crop=crop)
    pre = CudaPreprocessor(*_bundle(tmp_path), spec)
    frames = _frames([(1, 1), (7, 13), (40, 31)], seed=5)
    out = driver.memory.alloc(len(frames) * 3 * 24 * 24 * np.dtype(dtype).itemsize)
    stream = driver.Stream()
    pre.enqueue(frames, order, out, dtype, stream)  # type: ignore[arg-type]
    got = driver.memory.view(out, len(frames) * 3 * 24 * 24 * np.dtype(dtype).itemsize)
    want = preprocess_batch(frames, spec, order, dtype=dtype)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got.view(dtype).reshape(want.shape), want)
    name, grid, block = driver.launches[-1]
    assert name == ("galaxy_preprocess_f32" if dtype is np.float32 else "galaxy_preprocess_f16")
    assert grid == (3, 3) and block == (256, 1, 1)  # ceil(576 / 256) blocks, one row per frame
    assert driver.loaded == [".cubin"]


def test_staging_grows_and_frees_the_old_buffers(fake_pycuda: Any, tmp_path: Path) -> None:
    driver = fake_pycuda()
    pre = CudaPreprocessor(*_bundle(tmp_path), PreprocessSpec(input_size=8))
    out = driver.memory.alloc(4 * 3 * 8 * 8 * 4)
    pre.enqueue(_frames([(4, 4)]), "RGB", out, np.float32, driver.Stream())
    first = pre.capacity
    assert first == 1 << 20
    pre.enqueue(_frames([(1000, 700)]), "RGB", out, np.float32, driver.Stream())
    assert pre.capacity > first and len(driver.memory.freed) == 1
    pre.close()
    assert pre.capacity == 0 and len(driver.memory.freed) == 2


def test_a_cubin_that_does_not_load_falls_back_to_ptx_and_says_so(
    fake_pycuda: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = fake_pycuda(cubin_loads=False)
    with caplog.at_level(logging.WARNING, logger="edge_agent.backends.cuda_preprocess"):
        pre = CudaPreprocessor(*_bundle(tmp_path), DEFAULT_SPEC)
    assert driver.loaded == [".ptx"] and pre.source.suffix == ".ptx"
    assert "JIT-compiling" in caplog.text and "device kernel image is invalid" in caplog.text


def test_cuda_failures_become_backend_errors_naming_the_call(
    fake_pycuda: Any, tmp_path: Path
) -> None:
    fake_pycuda(cubin_loads=False)
    cubin, _ = _bundle(tmp_path)
    with pytest.raises(BackendError, match=r"does not load on this GPU.*no PTX"):
        CudaPreprocessor(cubin, None, DEFAULT_SPEC)
    driver = fake_pycuda(fail_alloc=True)
    pre = CudaPreprocessor(*_bundle(tmp_path), DEFAULT_SPEC)
    with pytest.raises(BackendError, match="device staging buffer: LogicError: cuMemAlloc failed"):
        pre.enqueue(_frames([(4, 4)]), "RGB", 0, np.float32, driver.Stream())
    with pytest.raises(BackendError, match="fp32 or fp16"):
        pre.enqueue(_frames([(4, 4)]), "RGB", 0, np.float64, driver.Stream())


def test_frames_are_checked_before_anything_is_uploaded(fake_pycuda: Any, tmp_path: Path) -> None:
    driver = fake_pycuda()
    pre = CudaPreprocessor(*_bundle(tmp_path), DEFAULT_SPEC)
    with pytest.raises(PreprocessError, match="H x W x 3"):
        pre.enqueue([np.zeros((4, 4), np.uint8)], "RGB", 0, np.float32, driver.Stream())
    with pytest.raises(PreprocessError, match="uint8"):
        pre.enqueue([np.zeros((4, 4, 3), np.float32)], "RGB", 0, np.float32, driver.Stream())
    assert pre.capacity == 0 and driver.launches == []


def test_without_pycuda_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendError, match="pycuda does not import"):
        CudaPreprocessor(*_bundle(tmp_path), DEFAULT_SPEC)


# ------------------------------------------------------------------------------ real GPU
def _real_gpu() -> tuple[Any, str] | None:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return None
    except cuda.Error:
        return None
    major, minor = cuda.Device(0).compute_capability()
    return cuda, f"sm_{major}{minor}"


@pytest.mark.gpu
def test_real_kernels_on_this_gpu_equal_the_reference(tmp_path: Path) -> None:
    found = _real_gpu()
    if found is None:
        pytest.skip("needs pycuda and a CUDA GPU (none here); scripts/gpu-check covers CuPy hosts")
    cuda, arch = found
    from build_engine.kernels import compile_kernels

    info = compile_kernels(tmp_path, arch)
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        spec = PreprocessSpec(input_size=64)
        frames = _frames([(1, 1), (7, 13), (255, 257), (300, 411)], seed=9)
        pre = CudaPreprocessor(tmp_path / str(info.cubin), tmp_path / str(info.ptx), spec)
        for dtype, order in ((np.float32, "RGB"), (np.float16, "BGR")):
            host = cuda.pagelocked_empty((len(frames), 3, 64, 64), dtype)
            host[...] = np.nan
            out = cuda.mem_alloc(host.nbytes)
            cuda.memcpy_htod(out, host)
            stream = cuda.Stream()
            pre.enqueue(frames, order, int(out), dtype, stream)  # type: ignore[arg-type]
            stream.synchronize()
            cuda.memcpy_dtoh(host, out)
            want = preprocess_batch(frames, spec, order, dtype=dtype)  # type: ignore[arg-type]
            np.testing.assert_array_equal(host, want)
            out.free()
        pre.close()
    finally:
        cuda.Context.pop()
