"""Compile the CUDA preprocessing kernels into a bundle: a cubin for this GPU, plus PTX.

The kernels are compiled on the device at deployment with the device's own nvcc: output of a
newer CUDA does not load on an older driver (CUDA 13 PTX fails on JetPack 6's CUDA 12.6). The
cubin is what the agent loads; the PTX is kept so that a driver that rejects the cubin can JIT
it instead. ptxas reports registers and spills; a spill fails the build, because a spilling
preprocessing kernel is a regression somebody should see, not a slowdown to ship.

This module imports no pydantic at import time (``edge_agent.contract.manifest`` is imported inside
:func:`compile_kernels`), so ``scripts/gpu-check`` can use it on a bare GPU host.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from build_engine.device import arch_of, find_nvcc, nvcc_version, probe
from build_engine.errors import KernelBuildError

if TYPE_CHECKING:
    from edge_agent.contract.manifest import KernelInfo

KERNEL_SOURCE = Path(__file__).resolve().parent / "cuda" / "preprocess.cu"
ENTRY_POINTS = ("galaxy_preprocess_f32", "galaxy_preprocess_f16")
CUBIN_NAME = "preprocess.cubin"
PTX_NAME = "preprocess.ptx"
NVCC_FLAGS = ("-O3", "-std=c++17")
_NVCC_TIMEOUT_S = 300

PtxasReport = dict[str, dict[str, int]]


def require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise KernelBuildError(
            "nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin); install the CUDA "
            "toolkit of this device (JetPack: apt install cuda-toolkit-12-6) or add it to PATH"
        )
    return nvcc


def check_arch(arch: str) -> str:
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise KernelBuildError(f"GPU architecture {arch!r} is not of the form sm_87")
    return arch


def ptx_target(arch: str) -> str:
    """``sm_87`` -> ``compute_87``: the virtual architecture the PTX is written for."""
    return "compute_" + check_arch(arch)[len("sm_") :]


def parse_ptxas(text: str) -> PtxasReport:
    """Per entry point: registers, stack frame, spill stores and loads from ``ptxas -v``."""
    report: PtxasReport = {}
    current: str | None = None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if m:
            current = m.group(1)
            report.setdefault(current, {})
            continue
        if current is None:
            continue
        m = re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
        )
        if m:
            report[current].update(
                stack_frame=int(m.group(1)),
                spill_stores=int(m.group(2)),
                spill_loads=int(m.group(3)),
            )
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            report[current]["registers"] = int(m.group(1))
    return report


def spill_lines(report: PtxasReport) -> list[str]:
    """One line per function that spills registers to local memory."""
    return [
        f"{name}: {info.get('spill_stores', 0)} bytes spill stores, "
        f"{info.get('spill_loads', 0)} bytes spill loads, {info.get('registers', '?')} registers"
        for name, info in sorted(report.items())
        if info.get("spill_stores", 0) or info.get("spill_loads", 0)
    ]


def _run_nvcc(args: list[str], what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=_NVCC_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{what}: nvcc could not run ({exc})") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        errors = [ln for ln in output.splitlines() if "error" in ln.lower()] or output.splitlines()
        raise KernelBuildError(f"{what}: nvcc failed: " + " | ".join(errors[:5]))
    return output


def compile_cubin(source: Path, out: Path, arch: str, nvcc: str | None = None) -> PtxasReport:
    """``nvcc -cubin`` with ``-Xptxas -v``; raises :class:`KernelBuildError` on any spill."""
    nvcc = nvcc or require_nvcc()
    args = [nvcc, "-cubin", f"-arch={check_arch(arch)}", *NVCC_FLAGS, "-Xptxas", "-v"]
    output = _run_nvcc([*args, "-o", str(out), str(source)], f"{source} for {arch}")
    report = parse_ptxas(output)
    missing = [name for name in ENTRY_POINTS if name not in report]
    if missing and source.resolve() == KERNEL_SOURCE:
        raise KernelBuildError(f"{source}: ptxas reported no entry point {', '.join(missing)}")
    spills = spill_lines(report)
    if spills:
        raise KernelBuildError(
            f"{source} spills registers on {arch} (fix the kernel, do not ship it): "
            + "; ".join(spills)
        )
    return report


def compile_ptx(source: Path, out: Path, arch: str, nvcc: str | None = None) -> None:
    nvcc = nvcc or require_nvcc()
    _run_nvcc(
        [nvcc, "-ptx", f"-arch={ptx_target(arch)}", *NVCC_FLAGS, "-o", str(out), str(source)],
        f"{source} to PTX for {arch}",
    )


def ptxas_report(source: Path, arch: str) -> PtxasReport:
    """Compile ``source`` for ``arch`` in a scratch directory and return ptxas's report."""
    with tempfile.TemporaryDirectory(prefix="galaxy-ptxas-") as tmp:
        return compile_cubin(Path(source), Path(tmp) / "kernel.cubin", arch)


def cubin_entry_points(path: Path) -> list[str]:
    """Names of the global functions (kernels) in a cubin, read from its ELF symbol table."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise KernelBuildError(f"{path}: not a 64-bit ELF cubin")
    endian = "<" if data[5] == 1 else ">"
    shoff = struct.unpack_from(endian + "Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from(endian + "HH", data, 0x3A)
    sections = [
        struct.unpack_from(endian + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != 2 or entsize == 0:  # SHT_SYMTAB
            continue
        strtab = sections[link]
        str_off = strtab[4]
        for pos in range(offset, offset + size, entsize):
            st_name, st_info = struct.unpack_from(endian + "IB", data, pos)
            if st_info >> 4 == 1 and st_info & 0xF == 2:  # STB_GLOBAL, STT_FUNC
                end = data.index(b"\0", str_off + st_name)
                names.append(data[str_off + st_name : end].decode("ascii", errors="replace"))
    return names


def ptx_entry_points(path: Path) -> list[str]:
    return re.findall(r"\.visible\s+\.entry\s+([\w$]+)\s*\(", Path(path).read_text())


def _atomic_target(out_dir: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def compile_kernels(out_dir: Path, arch: str | None = None) -> KernelInfo:
    """Write ``preprocess.cubin`` (for ``arch``, default this GPU's) and ``preprocess.ptx``."""
    from edge_agent.contract.manifest import KernelInfo, sha256_file

    out_dir = Path(out_dir)
    nvcc = require_nvcc()
    if arch is None:
        info = probe()
        if info.compute_capability is None:
            raise KernelBuildError(
                "no GPU found to compile the preprocessing kernels for; "
                "run build-engine on the device, or pass the architecture (e.g. sm_87)"
            )
        arch = arch_of(info.compute_capability)
    check_arch(arch)
    if not KERNEL_SOURCE.is_file():
        raise KernelBuildError(f"{KERNEL_SOURCE}: kernel source missing; reinstall galaxy-edge")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp_cubin = _atomic_target(out_dir, CUBIN_NAME)
        tmp_ptx = _atomic_target(out_dir, PTX_NAME)
    except OSError as exc:
        raise KernelBuildError(f"{out_dir}: cannot write the kernels here ({exc})") from exc
    try:
        compile_cubin(KERNEL_SOURCE, tmp_cubin, arch, nvcc)
        compile_ptx(KERNEL_SOURCE, tmp_ptx, arch, nvcc)
        found = cubin_entry_points(tmp_cubin)
        missing = [name for name in ENTRY_POINTS if name not in found]
        if missing:
            raise KernelBuildError(f"{KERNEL_SOURCE}: the cubin lacks {', '.join(missing)}")
        os.replace(tmp_cubin, out_dir / CUBIN_NAME)
        os.replace(tmp_ptx, out_dir / PTX_NAME)
    finally:
        tmp_cubin.unlink(missing_ok=True)
        tmp_ptx.unlink(missing_ok=True)
    cuda = nvcc_version(nvcc)
    if cuda is None:
        raise KernelBuildError(f"{nvcc} --version did not report a CUDA release")
    return KernelInfo(
        source_sha256=sha256_file(KERNEL_SOURCE),
        cuda_version=cuda,
        arch=arch,
        cubin=CUBIN_NAME,
        ptx=PTX_NAME,
    )


def compile_into(
    scratch: Path, arch: str | None, log: Callable[[str], None]
) -> tuple[KernelInfo, dict[str, Path]]:
    """The kernel step of a build: :func:`compile_kernels` into ``scratch/kernels``.

    Returns the manifest's record and the bundle's new files (bundle name -> path).
    """
    kernel_dir = scratch / "kernels"
    kernel_dir.mkdir()
    info = compile_kernels(kernel_dir, arch=arch)
    files = {name: kernel_dir / name for name in (info.cubin, info.ptx) if name}
    log(f"compiled preprocessing kernels for {info.arch} with CUDA {info.cuda_version}")
    return info, files
