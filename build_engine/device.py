"""What this host offers for building bundles: TensorRT, GPU, CUDA toolkit, Jetson release.

``build-engine`` records these facts in the manifest of a TensorRT bundle and compares them at
``--check`` time; the agent compares them with what it sees before it deserialises a plan.
:func:`probe` never raises on a plain CPU host: what is absent is ``None`` (or 0 DLA cores).

The GPU name comes from the CUDA driver first (cuda-python, then pycuda): that is the name the
agent's TensorRT backend reads through pycuda, so a plan built here is recognised there.
nvidia-smi is the last resort; its Jetson suffix `` (nvgpu)`` is dropped for the same reason.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_SUBPROCESS_TIMEOUT_S = 20


@dataclass(frozen=True)
class DeviceInfo:
    """Facts about this host; ``None`` where the host does not have the thing."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None  # e.g. "8.7"
    l4t_release: str | None  # e.g. "R36.4.3"
    dla_cores: int
    cuda_version: str | None  # of nvcc, e.g. "12.6.68"
    nvcc: str | None  # path of nvcc
    openvino_version: str | None = None  # openvino.__version__ where the extra is installed
    intel_cpu: bool = False  # where OpenVINO's CPU plugin is the runtime of choice

    @property
    def arch(self) -> str | None:
        """The cubin target of this GPU, e.g. ``sm_87``."""
        return arch_of(self.compute_capability) if self.compute_capability else None


def arch_of(compute_capability: str) -> str:
    """``"8.7"`` -> ``"sm_87"``."""
    major, _, minor = compute_capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {compute_capability!r} is not of the form '8.7'")
    return f"sm_{major}{minor}"


def import_tensorrt() -> ModuleType | None:
    """The real ``tensorrt`` module, or ``None`` where it is absent.

    ``tensorrt-stubs`` installs a ``tensorrt/`` folder of ``.pyi`` files that Python imports as
    an empty namespace package, so a successful import alone does not mean TensorRT is here:
    the module must also carry its version and its ``Builder``.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    if getattr(trt, "__version__", None) is None or not hasattr(trt, "Builder"):
        return None
    return trt


def parse_l4t_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` (``/etc/nv_tegra_release``) -> ``"R36.4.3"``."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if match is None:
        return None
    return f"R{match.group(1)}.{match.group(2).rstrip('.')}"


def l4t_release(path: Path = NV_TEGRA_RELEASE) -> str | None:
    """The Jetson Linux (L4T) release of this host, or ``None`` off a Jetson."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_l4t_release(text)


def find_nvcc() -> str | None:
    """nvcc on PATH, else under ``$CUDA_HOME`` or ``/usr/local/cuda`` (JetPack puts it there)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def parse_nvcc_version(text: str) -> str | None:
    """``Cuda compilation tools, release 12.6, V12.6.68`` -> ``"12.6.68"``."""
    match = re.search(r"release\s+[0-9.]+,\s*V([0-9.]+)", text)
    if match:
        return match.group(1)
    match = re.search(r"release\s+([0-9.]+)", text)
    return match.group(1) if match else None


def nvcc_version(nvcc: str) -> str | None:
    try:
        done = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvcc_version(done.stdout) if done.returncode == 0 else None


def _gpu_from_cuda_python() -> tuple[str, str] | None:
    try:
        from cuda.bindings import driver  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return None
        err, dev = driver.cuDeviceGet(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return None
        err, raw = driver.cuDeviceGetName(256, dev)
        if err != driver.CUresult.CUDA_SUCCESS:
            return None
        attr = driver.CUdevice_attribute
        err, major = driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev
        )
        err2, minor = driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev
        )
        if err != driver.CUresult.CUDA_SUCCESS or err2 != driver.CUresult.CUDA_SUCCESS:
            return None
    except (RuntimeError, OSError):
        # cuda-python raises a RuntimeError subclass when libcuda.so is absent (a CPU host).
        return None
    name = bytes(raw).split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    return name, f"{major}.{minor}"


def _gpu_from_pycuda() -> tuple[str, str] | None:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return None
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return str(dev.name()).strip(), f"{major}.{minor}"
    except cuda.Error:
        return None


def parse_nvidia_smi(text: str) -> tuple[str, str] | None:
    """First line of ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader``."""
    for line in text.splitlines():
        name, sep, cap = line.rpartition(",")
        cap = cap.strip()
        if sep and re.fullmatch(r"\d+\.\d+", cap):
            return re.sub(r"\s*\(nvgpu\)$", "", name.strip()), cap
    return None


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else None


def gpu() -> tuple[str | None, str | None]:
    """(name, compute capability) of GPU 0, or ``(None, None)``."""
    for source in (_gpu_from_cuda_python, _gpu_from_pycuda, _gpu_from_nvidia_smi):
        found = source()
        if found is not None:
            return found
    return None, None


def dla_cores(trt: ModuleType | None) -> int:
    """DLA cores TensorRT's builder sees (0 without TensorRT or a GPU)."""
    if trt is None:
        return 0
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return int(builder.num_DLA_cores)
    except (TypeError, RuntimeError):
        # TensorRT's Builder raises TypeError ("factory function returned nullptr") without a GPU.
        return 0


def probe() -> DeviceInfo:
    """Everything above, gathered once; never raises on a host that lacks any of it."""
    from edge_agent.backends.openvino_host import probe as probe_openvino

    trt = import_tensorrt()
    name, cap = gpu()
    nvcc = find_nvcc()
    openvino = probe_openvino()
    return DeviceInfo(
        tensorrt_version=str(trt.__version__) if trt is not None else None,
        gpu_name=name,
        compute_capability=cap,
        l4t_release=l4t_release(),
        dla_cores=dla_cores(trt),
        cuda_version=nvcc_version(nvcc) if nvcc else None,
        nvcc=nvcc,
        openvino_version=openvino.version,
        intel_cpu=openvino.intel,
    )
