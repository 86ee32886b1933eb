"""A full quarantine file system: no empty or partial file left behind, the input where it was.

Two ways to fill it: a real size-limited tmpfs (needs root; skipped with the reason elsewhere),
and ``os.write`` failing with ENOSPC for files under the quarantine folder only (runs anywhere).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from agent_testkit import drop_file, galaxy_like
from pipeline_testkit import FolderPipeline
from small_filesystem import fill, small_filesystem

from edge_agent.ledger import FileKey
from edge_agent.quarantine import Quarantine, QuarantineError


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


@pytest.fixture
def full_quarantine(tmp_path: Path) -> Iterator[Path]:
    """A quarantine folder on a real tmpfs with no space left (ballast fills it)."""
    with small_filesystem(tmp_path / "qfs", 256 * 1024) as mount:
        (mount / "inbox").mkdir()  # the input filesystem's twin, for same-device moves
        (mount / "inbox" / "same-fs.png").write_bytes(b"\x89PNG" + bytes(3000))
        (mount / "q" / "src").mkdir(parents=True)
        fill(mount)
        yield mount


def _enospc_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``os.write`` raises ENOSPC for files under ``folder``; returns the paths it refused."""
    real = os.write
    refused: list[str] = []

    def write(fd: int, data: bytes | memoryview) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(folder)):
            refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return refused


def test_real_full_filesystem_leaves_nothing_behind(tmp_path: Path, full_quarantine: Path) -> None:
    q = Quarantine(full_quarantine / "q")
    before = files_under(full_quarantine)
    other_fs = tmp_path / "bad.png"
    other_fs.write_bytes(b"\x89PNG" + bytes(50_000))
    same_fs = full_quarantine / "inbox" / "same-fs.png"
    for path in (other_fs, same_fs):
        with pytest.raises(QuarantineError, match="stays in place") as info:
            q.put_file(path, source="src", reason="corrupt", message="m")
        assert info.value.cause == "No space left on device"
        assert path.exists()
    with pytest.raises(QuarantineError) as info:
        q.put_bytes(bytes(50_000), name="frame", source="src", reason="corrupt", message="m")
    assert info.value.cause == "No space left on device"
    assert files_under(full_quarantine) == before  # no empty reason file, no .part


def test_failing_writes_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in" / "bad.png"
    src.parent.mkdir()
    src.write_bytes(b"not a png")
    q = Quarantine(tmp_path / "q")
    refused = _enospc_under(tmp_path / "q", monkeypatch)
    with pytest.raises(QuarantineError, match="stays in place") as info:
        q.put_file(src, source="inbox", reason="corrupt", message="junk")
    assert info.value.cause == "No space left on device" and refused
    assert src.read_bytes() == b"not a png"
    with pytest.raises(QuarantineError, match="cannot write a rejected frame"):
        q.put_bytes(b"\x00\x01", name="f", source="mqtt", reason="corrupt", message="x")
    assert files_under(tmp_path / "q") == []


def test_a_folder_is_never_moved(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    with pytest.raises(QuarantineError, match="folder"):
        Quarantine(tmp_path / "q").put_file(folder, source="s", reason="r", message="m")
    assert folder.is_dir()


def test_pipeline_with_a_full_quarantine_leaves_the_file_marked_and_goes_on(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ok, png = cv2.imencode(".png", galaxy_like(4))
    with FolderPipeline(tmp_path, tiny_bundle) as rig:
        _enospc_under(rig.quarantine_dir, monkeypatch)
        bad = drop_file(rig.inbox, "bad.png", b"hello, not an image")
        drop_file(rig.inbox, "good.png", png.tobytes())
        rig.wait(classified=1, errors=1)
        monkeypatch.undo()  # space is back
        (error,) = rig.messages("errors")
        assert error["reason"] == "wrong_type" and error["quarantined_to"] is None
        assert "left in place" in error["detail"] and "No space left" in error["detail"]
        assert bad.exists() and rig.ledger.state(FileKey.of(bad)) == "rejected"
        assert files_under(rig.quarantine_dir) == []
        assert rig.pipeline.alive()
    # The next start does not try it again (it would fill the errors topic for ever) ...
    with FolderPipeline(tmp_path, tiny_bundle) as rig:
        drop_file(rig.inbox, "later.png", png.tobytes())
        rig.wait(classified=2, errors=1)
        time.sleep(0.3)
        assert len(rig.messages("errors")) == 1
    # ... until it changes: then it is a new input.
    bad.write_bytes(b"hello again, still not an image")
    with FolderPipeline(tmp_path, tiny_bundle) as rig:
        rig.wait(classified=2, errors=2)
        where = Path(rig.messages("errors")[-1]["quarantined_to"])
        assert where.is_file() and not bad.exists()
        reason = json.loads(where.with_name(where.name + ".reason.json").read_text())
        assert reason["reason"] == "wrong_type"
