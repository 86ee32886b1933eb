"""What this host offers OpenVINO: its version, the CPU and the instruction sets that matter.

The instruction sets are the key of a compiled model (with the OpenVINO version): a model
compiled and gated with BF16 on AMX/AVX-512-BF16 must not silently run another way elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Flags of /proc/cpuinfo that change which kernels OpenVINO's CPU plugin picks.
KERNEL_ISA = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


@dataclass(frozen=True)
class OpenVinoHost:
    version: str | None  # None: openvino does not import here
    cpu_name: str
    isa: list[str]
    intel: bool = False  # vendor GenuineIntel: where OpenVINO's CPU plugin is at its best

    @property
    def has_bf16(self) -> bool:
        """Fast BF16 (AMX or AVX-512 BF16); elsewhere OpenVINO would emulate it slowly."""
        return "amx_bf16" in self.isa or "avx512_bf16" in self.isa


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The :data:`KERNEL_ISA` flags of the first CPU in ``cpuinfo`` (empty when unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return [f for f in KERNEL_ISA if f in flags]
    return []


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``vendor_id`` of the first CPU (e.g. ``GenuineIntel``), empty when unknown."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def probe() -> OpenVinoHost:
    """This host, as OpenVINO sees it (imports openvino when it is installed)."""
    intel = cpu_vendor() == "GenuineIntel"
    try:
        import openvino as ov
    except ImportError:
        return OpenVinoHost(None, "", cpu_isa(), intel)
    name = str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    return OpenVinoHost(ov.__version__, name, cpu_isa(), intel)
