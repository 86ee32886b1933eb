"""Back-pressure on a full outbox: the pipeline waits, holds its frames, and goes on by itself."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import pytest
from agent_testkit import drop_file, galaxy_like
from pipeline_testkit import FolderPipeline

from edge_agent.ledger import FileKey
from edge_agent.outbox import Outbox, PendingMessage
from edge_agent.outbox_writer import OutboxWriter


def _page_limit(box: Outbox, extra_pages: int) -> None:
    """SQLite's page limit makes the database "full" (SQLITE_FULL) without privileges."""
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mine(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_agent.outbox_writer"]


def _big(n: int) -> list[PendingMessage]:
    return [PendingMessage("t", bytes(40_000), 1, f"big{n}-{i}") for i in range(3)]


def test_waits_with_backoff_logs_rate_limited_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite3", 1 << 30, 3600, reserve_bytes=0)
    clock = Clock()
    writer = OutboxWriter(box, min_wait_s=0.01, max_wait_s=0.02, log_every_s=60.0, clock=clock)
    _page_limit(box, 0)
    beats: list[float] = []
    done = threading.Event()
    result: list[bool] = []

    def heartbeat() -> None:
        beats.append(clock.now)
        clock.now += 0.005  # time passes while it waits

    def run() -> None:
        result.append(writer.put_many(_big(0), threading.Event(), heartbeat))
        done.set()

    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox_writer"):
        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 10
        while writer.state().attempts < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        state = writer.state()
        assert state.waiting_since is not None and state.attempts >= 20
        assert "full" in (state.error or "")
        assert not done.is_set() and beats  # waiting, with the watchdog fed
        assert len(mine(caplog)) == 1 and "back-pressure" in mine(caplog)[0]  # not per attempt
        clock.now += 61
        while len(mine(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "still full after" in mine(caplog)[1]
        _page_limit(box, 1000)  # space returns
        assert done.wait(10) and result == [True]
        t.join()
    assert "writable again" in mine(caplog)[-1]
    assert writer.state().waiting_since is None
    assert box.depth() == 3
    box.close()


def test_stop_while_waiting_returns_false_and_stores_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", 1 << 30, 3600, reserve_bytes=0)
    writer = OutboxWriter(box, min_wait_s=0.05, max_wait_s=0.1)
    _page_limit(box, 0)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert writer.put_many(_big(1), stop) is False
    assert time.monotonic() - t0 < 2
    assert box.depth() == 0
    box.close()


def _png(seed: int) -> bytes:
    _ok, png = cv2.imencode(".png", galaxy_like(seed))
    return png.tobytes()


def test_pipeline_holds_its_frames_while_the_outbox_is_full(
    tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reported crash loop: now the pipeline stays alive, the files stay where they are
    and are not marked done, and everything is classified once space returns."""
    with caplog.at_level(logging.ERROR), FolderPipeline(tmp_path, tiny_bundle) as rig:
        _page_limit(rig.outbox, 0)
        files = [drop_file(rig.inbox, f"g{i}.png", _png(i)) for i in range(6)]
        deadline = time.monotonic() + 20
        while rig.pipeline.outbox_writer.state().attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rig.pipeline.outbox_writer.state().waiting_since is not None
        time.sleep(0.5)
        assert rig.pipeline.alive()
        stored = set(rig.by_name("classifications"))
        assert len(stored) < len(files)  # the first batches may have fitted in free pages
        for f in files:
            assert f.exists()  # nothing moved or lost
            # Done exactly when its result is in the outbox: held frames are not done.
            assert (rig.ledger.state(FileKey.of(f)) == "done") == (f.name in stored)
        assert "back-pressure" in caplog.text
        _page_limit(rig.outbox, 10_000)  # space returns
        rig.wait(classified=6, errors=0, timeout=30)
        for f in files:
            assert rig.ledger.state(FileKey.of(f)) == "done"
        assert rig.pipeline.alive()
    assert sorted(rig.by_name("classifications")) == [f"g{i}.png" for i in range(6)]
