"""The watched folder: complete files only, once each, and a restart resumes from the ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edge_agent.ledger import FileKey, Ledger
from edge_agent.sources.base import Frame, FrameHub
from edge_agent.sources.directory import DirectorySource, is_candidate


def collect(hub: FrameHub, n: int, timeout: float = 5.0) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        f = hub.get(0.05)
        if f is not None:
            out.append(f)
    return out


def start(folder: Path, ledger: Ledger, size: int = 100) -> tuple[FrameHub, DirectorySource]:
    hub = FrameHub()
    src = DirectorySource("inbox", hub.queue("inbox", size, "block"), ("png",), folder, ledger)
    src.start()
    return hub, src


def test_candidates() -> None:
    assert is_candidate(Path("a.png")) and is_candidate(Path("a.fits"))
    for name in (".a.png", "a.png.tmp", "a.part", "x.reason.json"):
        assert not is_candidate(Path(name))


def test_temp_then_rename_picked_up_once_complete(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    hub, src = start(folder, Ledger(tmp_path / "l.db"))
    try:
        # A writer that keeps its file open: nothing may be emitted until it is complete.
        with open(folder / "slow.png.part", "wb") as fh:
            fh.write(b"first half")
            fh.flush()
            assert hub.get(0.3) is None
            fh.write(b" second half")
        assert hub.get(0.3) is None  # closed, but still a .part: ignored
        os.replace(folder / "slow.png.part", folder / "slow.png")
        frames = collect(hub, 1)
        assert [f.path for f in frames] == [folder / "slow.png"]
        assert frames[0].path.read_bytes() == b"first half second half"  # type: ignore[union-attr]
        assert frames[0].frame_ref.startswith(f"{folder / 'slow.png'}@")
        # A plain write is seen at close, a dotfile never.
        (folder / "direct.png").write_bytes(b"x")
        (folder / ".hidden.png").write_bytes(b"x")
        frames = collect(hub, 2, timeout=1.0)
        assert [f.path for f in frames] == [folder / "direct.png"]
        # Renamed in from a staging folder elsewhere (inotify: a move-to with no move-from).
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "moved.png").write_bytes(b"y")
        os.replace(staging / "moved.png", folder / "moved.png")
        frames = collect(hub, 1, timeout=2.0)
        assert [f.path for f in frames] == [folder / "moved.png"]
    finally:
        src.stop()


def test_rescan_at_start_and_ledger_resume(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"f{i}.png").write_bytes(bytes([i]) * (i + 1))
    ledger = Ledger(tmp_path / "l.db")
    hub, src = start(folder, ledger)
    frames = collect(hub, 4)
    assert sorted(f.path.name for f in frames) == ["f0.png", "f1.png", "f2.png", "f3.png"]  # type: ignore[union-attr]
    frames[0].done()
    frames[1].done()
    src.stop()
    ledger.close()

    # "Restart": the two done files are skipped, the two seen-but-not-done come again.
    ledger = Ledger(tmp_path / "l.db")
    assert len(ledger.pending()) == 2
    hub, src = start(folder, ledger)
    try:
        again = collect(hub, 3, timeout=1.5)
        assert sorted(f.path.name for f in again) == sorted(f.path.name for f in frames[2:])  # type: ignore[union-attr]
        for f in again:
            f.done()
        assert ledger.pending() == []
        assert ledger.state(FileKey.of(folder / "f3.png")) == "done"
    finally:
        src.stop()


def test_block_policy_files_wait_on_disk(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        (folder / f"f{i}.png").write_bytes(b"x" * (i + 1))
    hub, src = start(folder, Ledger(tmp_path / "l.db"), size=2)
    try:
        time.sleep(0.3)
        assert hub.depth() == 2 and src.queue.dropped == 0
        got = collect(hub, 6)
        assert len({f.path for f in got}) == 6
    finally:
        src.stop()
