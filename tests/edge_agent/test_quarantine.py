from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.quarantine import Quarantine, QuarantineError


def test_file_moved_with_reason(tmp_path: Path) -> None:
    src = tmp_path / "in" / "bad.png"
    src.parent.mkdir()
    src.write_bytes(b"not a png")
    q = Quarantine(tmp_path / "q")
    target = q.put_file(src, source="inbox", reason="corrupt", message="junk")
    assert not src.exists()
    assert target.read_bytes() == b"not a png" and target.parent == tmp_path / "q" / "inbox"
    info = json.loads(target.with_name(target.name + ".reason.json").read_text())
    assert (
        info["reason"] == "corrupt" and info["original"] == str(src) and info["source"] == "inbox"
    )


def test_bytes_written_with_reason(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q")
    target = q.put_bytes(
        b"\x00\x01",
        name="../../etc/passwd",
        source="mqtt:frames",
        reason="wrong_type",
        message="x",
        extra={"frame_ref": "r1"},
    )
    assert target.read_bytes() == b"\x00\x01"
    assert target.is_relative_to(tmp_path / "q")  # a hostile name cannot escape
    info = json.loads(target.with_name(target.name + ".reason.json").read_text())
    assert info["frame_ref"] == "r1"


def test_unwritable_quarantine_keeps_file(tmp_path: Path) -> None:
    src = tmp_path / "bad.png"
    src.write_bytes(b"x")
    blocker = tmp_path / "q"
    blocker.write_text("a file, not a folder")
    with pytest.raises(QuarantineError, match="stays in place"):
        Quarantine(blocker).put_file(src, source="s", reason="corrupt", message="m")
    assert src.exists()


def test_long_and_undecodable_names_fit_name_max(tmp_path: Path) -> None:
    """120 characters of CJK are 360 bytes: the cut is in bytes, so quarantine names fit 255."""
    import os

    from edge_agent.quarantine import Quarantine

    quarantine = Quarantine(tmp_path / "q")
    inbox = tmp_path / "in"
    inbox.mkdir()
    for raw in ("长" * 80 + ".png").encode(), b"bytes-\xff\xfe.png", ("L" * 245 + ".png").encode():
        path = inbox / os.fsdecode(raw)
        path.write_bytes(b"bad")
        target = quarantine.put_file(path, source="inbox", reason="corrupt", message="bad")
        assert target.is_file() and not path.exists()
        assert len(os.fsencode(target.name + ".reason.json")) <= 255
        target.name.encode("utf-8")  # no surrogate escape left in what the quarantine names
