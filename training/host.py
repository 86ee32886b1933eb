"""The machine a measurement ran on, as reports name it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name(fallback: str) -> str:
    """The CPU's model name from /proc/cpuinfo; else the platform's processor, else ``fallback``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or fallback
