"""A real, small, size-limited file system (tmpfs) for full-disk tests.

Mounting needs root (CAP_SYS_ADMIN); where it is refused the test is skipped with the reason.
Tests that must run everywhere make SQLite "full" with ``PRAGMA max_page_count`` instead, which
raises the same SQLITE_FULL error without privileges.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextmanager
def small_filesystem(mountpoint: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` on ``mountpoint`` (created); skip when not permitted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the max_page_count tests cover it")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): no CAP_SYS_ADMIN?")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file until the file system has at most ``leave_bytes`` free."""
    ballast = path / f"ballast-{len(list(path.glob('ballast-*')))}"
    chunk = bytes(64 * 1024)
    with ballast.open("wb") as f:
        try:
            while free_bytes(path) > leave_bytes:
                f.write(chunk[: max(4096, min(len(chunk), free_bytes(path) - leave_bytes))])
                f.flush()
        except OSError:
            pass  # ENOSPC: as full as it gets
    return ballast
