"""The CUDA preprocessing kernels compile here for Orin (sm_87) and H100/H200 (sm_90), no spills.

Compilation only: no GPU here. Parity with the CPU reference on a GPU is scripts/gpu-check and
the ``gpu`` test of tests/edge_agent/backends/test_cuda_preprocess.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from build_engine import kernels
from build_engine.device import find_nvcc
from build_engine.errors import KernelBuildError

needs_nvcc = pytest.mark.skipif(
    find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed on this host"
)

SPILLING_KERNEL = r"""
extern "C" __global__ void __launch_bounds__(1024, 2) spiller(float* out, int k) {
    float acc[256];
#pragma unroll
    for (int i = 0; i < 256; ++i) acc[i] = out[i * k] * (i + 1);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 256; ++i) s += acc[(i * 7 + k) & 255] * acc[i];
    out[threadIdx.x] = s;
}
"""


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernels_compile_without_spills(arch: str) -> None:
    report = kernels.ptxas_report(kernels.KERNEL_SOURCE, arch)
    assert set(report) == set(kernels.ENTRY_POINTS)
    for name, info in report.items():
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, (name, info)
        assert info["stack_frame"] == 0, (name, info)
        assert 0 < info["registers"] <= 64, (name, info)  # 256 threads/block at full occupancy


@needs_nvcc
def test_compile_kernels_writes_cubin_and_ptx_with_both_entry_points(tmp_path: Path) -> None:
    info = kernels.compile_kernels(tmp_path, "sm_87")
    assert (info.arch, info.cubin, info.ptx) == ("sm_87", "preprocess.cubin", "preprocess.ptx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocess.cubin", "preprocess.ptx"]
    assert sorted(kernels.cubin_entry_points(tmp_path / "preprocess.cubin")) == sorted(
        kernels.ENTRY_POINTS
    )
    ptx = tmp_path / "preprocess.ptx"
    assert sorted(kernels.ptx_entry_points(ptx)) == sorted(kernels.ENTRY_POINTS)
    assert ".target sm_87" in ptx.read_text()
    assert len(info.source_sha256) == 64 and info.cuda_version[0].isdigit()


@needs_nvcc
def test_kernel_float_math_is_never_contracted_or_approximated(tmp_path: Path) -> None:
    """Parity with NumPy needs every multiply and add rounded separately, and IEEE division."""
    kernels.compile_ptx(kernels.KERNEL_SOURCE, tmp_path / "k.ptx", "sm_90")
    ptx = (tmp_path / "k.ptx").read_text()
    assert "fma.rn.f32" not in ptx and "div.approx" not in ptx and "div.full" not in ptx
    assert "div.rn.f32" in ptx and "mul.rn.f32" in ptx and "add.rn.f32" in ptx


@needs_nvcc
def test_a_spilling_kernel_fails_the_build_with_the_spill_report(tmp_path: Path) -> None:
    source = tmp_path / "spill.cu"
    source.write_text(SPILLING_KERNEL)
    report = None
    try:
        report = kernels.ptxas_report(source, "sm_90")
    except KernelBuildError as exc:
        assert "spills registers" in str(exc) and "spiller" in str(exc)
        assert "bytes spill stores" in str(exc)
    else:
        pytest.fail(f"expected a spill, ptxas reported {report}")


@needs_nvcc
def test_compile_errors_and_bad_arguments_are_kernel_build_errors(tmp_path: Path) -> None:
    source = tmp_path / "broken.cu"
    source.write_text('extern "C" __global__ void k() { this is not cuda; }\n')
    with pytest.raises(KernelBuildError, match="nvcc failed"):
        kernels.ptxas_report(source, "sm_90")
    with pytest.raises(KernelBuildError, match="not of the form sm_87"):
        kernels.compile_kernels(tmp_path, "compute_87")
    with pytest.raises(KernelBuildError, match="not a 64-bit ELF"):
        kernels.cubin_entry_points(source)


def test_parse_ptxas_reads_each_function() -> None:
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k1' for 'sm_87'
ptxas info    : Function properties for k1
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 416 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_87'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers
"""
    report = kernels.parse_ptxas(text)
    assert report["k1"] == {
        "stack_frame": 8,
        "spill_stores": 4,
        "spill_loads": 12,
        "registers": 255,
    }
    assert report["k2"]["registers"] == 30
    assert kernels.spill_lines(report) == [
        "k1: 4 bytes spill stores, 12 bytes spill loads, 255 registers"
    ]


# The kernel source itself, compiled for the CPU with g++: CUDA's keywords and intrinsics
# mapped to their IEEE single-precision host equivalents (no contraction), one "thread" per
# call. This checks the kernel's indexing, crop, pitch, channel order and arithmetic against the
# reference on every CI run; the GPU itself is checked by scripts/gpu-check.
HOST_FP16_H = r"""
#pragma once
#include <cstdint>
#include <cstring>
struct __half { uint16_t bits; };
inline __half __float2half_rn(float f) {  // round to nearest even, as NumPy's astype(float16)
    uint32_t x; std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    int32_t exp = int32_t((x >> 23) & 0xffu) - 127 + 15;
    __half h;
    if (exp >= 31) { h.bits = uint16_t(sign | 0x7c00u); return h; }
    if (exp <= 0) {
        if (exp < -10) { h.bits = uint16_t(sign); return h; }
        mant |= 0x800000u;
        uint32_t shift = uint32_t(14 - exp), hm = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (hm & 1u))) ++hm;
        h.bits = uint16_t(sign | hm); return h;
    }
    uint32_t hm = mant >> 13, rem = mant & 0x1fffu, out = sign | (uint32_t(exp) << 10) | hm;
    if (rem > 0x1000u || (rem == 0x1000u && (hm & 1u))) ++out;
    h.bits = uint16_t(out); return h;
}
"""

HOST_DRIVER_CPP = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
using std::max; using std::min;
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__ __restrict
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
template <typename T> inline T __ldg(const T* p) { return *p; }
#include "KERNEL_SOURCE"
extern "C" void launch(int f16, const unsigned char* const* frames, const int* h, const int* w,
                       const int* pitch, int n, int bgr, int s, float scale, float offset,
                       int crop_none, void* out) {
    blockDim.x = 256;
    for (unsigned y = 0; y < unsigned(n); ++y)
        for (unsigned b = 0; b < unsigned(s * s + 255) / 256; ++b)
            for (unsigned t = 0; t < 256; ++t) {
                blockIdx.x = b; blockIdx.y = y; threadIdx.x = t;
                if (f16) galaxy_preprocess_f16(frames, h, w, pitch, bgr, s, scale, offset,
                                               crop_none, static_cast<__half*>(out));
                else galaxy_preprocess_f32(frames, h, w, pitch, bgr, s, scale, offset,
                                           crop_none, static_cast<float*>(out));
            }
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import ctypes
    import shutil
    import subprocess

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed: cannot compile the kernel source for the host")
    work = tmp_path_factory.mktemp("host-kernel")
    (work / "cuda_fp16.h").write_text(HOST_FP16_H)
    driver = work / "driver.cpp"
    driver.write_text(HOST_DRIVER_CPP.replace("KERNEL_SOURCE", str(kernels.KERNEL_SOURCE)))
    lib = work / "libkernel.so"
    flags = ["-O1", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
    subprocess.run(
        [gxx, *flags, "-I", str(work), "-o", str(lib), str(driver)], check=True, capture_output=True
    )
    so = ctypes.CDLL(str(lib))
    p = ctypes.c_void_p
    i = ctypes.c_int
    so.launch.argtypes = [i, p, p, p, p, i, i, i, ctypes.c_float, ctypes.c_float, i, p]
    return so


@pytest.mark.parametrize("crop", ["center_square", "none"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("out_size", [64, 37])
def test_kernel_source_on_the_host_equals_the_reference_bit_for_bit(
    host_kernel: Any, crop: str, order: str, out_size: int
) -> None:
    import numpy as np

    from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch

    rng = np.random.default_rng(out_size)
    shapes = [(1, 1), (7, 13), (64, 64), (100, 37), (255, 257), (30, 300)]
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    rows, pitches = [], []
    for f in frames:  # pitched rows whose padding is random: a pitch bug reads garbage
        h, w = f.shape[:2]
        pitch = 3 * w + int(rng.integers(0, 40))
        buf = rng.integers(0, 256, h * pitch, dtype=np.uint8)
        buf.reshape(h, pitch)[:, : 3 * w] = f.reshape(h, 3 * w)
        rows.append(buf)
        pitches.append(pitch)
    ptrs = np.array([r.ctypes.data for r in rows], dtype=np.uint64)
    hs = np.array([f.shape[0] for f in frames], np.int32)
    ws = np.array([f.shape[1] for f in frames], np.int32)
    ps = np.array(pitches, np.int32)
    spec = PreprocessSpec(input_size=out_size, crop=crop)  # type: ignore[arg-type]
    want = preprocess_batch(frames, spec, order)  # type: ignore[arg-type]
    for f16, dtype in ((0, np.float32), (1, np.float16)):
        out = np.full(want.shape, np.nan, dtype=dtype)
        host_kernel.launch(
            f16,
            ptrs.ctypes.data,
            hs.ctypes.data,
            ws.ctypes.data,
            ps.ctypes.data,
            len(frames),
            int(order == "BGR"),
            out_size,
            float(np.float32(spec.scale)),
            float(np.float32(spec.offset)),
            int(crop == "none"),
            out.ctypes.data,
        )
        np.testing.assert_array_equal(out, want.astype(dtype))
