"""The CPU's name for reports: /proc/cpuinfo first, then the platform, then the caller's text."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from training import host


def test_each_caller_keeps_its_own_last_resort(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Path) -> str:
        raise OSError("no /proc here")

    monkeypatch.setattr(Path, "read_text", unreadable)
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert host.cpu_name("unknown CPU") == "unknown CPU"
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert host.cpu_name("unknown CPU") == "x86_64"


def test_the_model_name_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        Path, "read_text", lambda self: "processor\t: 0\nmodel name\t: Example CPU @ 2GHz\n"
    )
    assert host.cpu_name("unknown CPU") == "Example CPU @ 2GHz"
