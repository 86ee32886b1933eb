import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from small_filesystem import fill, small_filesystem

from edge_agent.outbox import Outbox, OutboxError, OutboxFullError, PendingMessage

BIG = 1 << 30
WEEK = 7 * 24 * 3600.0


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def box(tmp_path: Path):
    ob = Outbox(tmp_path / "outbox.sqlite3", max_bytes=BIG, max_age_s=WEEK)
    yield ob
    ob.close()


def test_put_take_oldest_first_and_ack(box: Outbox) -> None:
    for i in range(5):
        box.put("t/c", f"p{i}".encode(), 1, msg_id=f"m{i}")
    items = box.take_unsent(3)
    assert [i.msg_id for i in items] == ["m0", "m1", "m2"]
    assert items[0].topic == "t/c" and items[0].payload == b"p0" and items[0].qos == 1
    assert box.depth() == 5
    assert box.ack("m1") is True
    assert box.ack("m1") is False  # already gone
    assert box.depth() == 4
    assert [i.msg_id for i in box.take_unsent(10)] == ["m0", "m2", "m3", "m4"]


def test_put_is_idempotent_on_msg_id(box: Outbox) -> None:
    box.put("t/c", b"first", msg_id="same")
    box.put("t/c", b"second", msg_id="same")
    box.put_many([PendingMessage("t/c", b"third", 1, "same"), ("t/c", b"x", 1, "other")])
    assert box.depth() == 2
    items = box.take_unsent(10)
    assert [(i.msg_id, i.payload) for i in items] == [("same", b"first"), ("other", b"x")]
    assert box.bytes() == len(b"first") + len(b"x") + 2 * len("t/c")


def test_in_flight_excluded_until_released_or_acked(box: Outbox) -> None:
    box.put_many([("t", b"a", 1, "a"), ("t", b"b", 1, "b"), ("t", b"c", 1, "c")])
    box.mark_in_flight(["a", "b"])
    assert [i.msg_id for i in box.take_unsent(10)] == ["c"]
    assert box.in_flight_count() == 2
    assert box.release_in_flight(["b", "zzz"]) == 1
    assert [i.msg_id for i in box.take_unsent(10)] == ["b", "c"]
    box.ack("a")
    assert box.in_flight_count() == 0
    box.mark_in_flight(["b", "c"])
    assert box.take_unsent(10) == []
    assert box.release_in_flight() == 2
    assert [i.msg_id for i in box.take_unsent(10)] == ["b", "c"]


def test_ack_many_counts_only_stored(box: Outbox) -> None:
    box.put_many([("t", b"a", 1, "a"), ("t", b"b", 1, "b")])
    assert box.ack_many(["a", "b", "nope"]) == 2
    assert box.depth() == 0 and box.bytes() == 0


def test_bytes_limit_drops_oldest_counts_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    # Each message: 100 payload bytes + 1 topic byte = 101; room for 9 of them.
    with Outbox(path, max_bytes=1000, max_age_s=WEEK) as box:
        for i in range(12):
            box.put("t", bytes(100), msg_id=f"m{i:02d}")
        assert box.bytes() <= 1000
        assert box.depth() == 9
        assert [i.msg_id for i in box.take_unsent(1)] == ["m03"]  # m00..m02 dropped
        assert box.dropped() == {"bytes": 3, "age": 0}
    with Outbox(path, max_bytes=1000, max_age_s=WEEK) as box:
        assert box.dropped() == {"bytes": 3, "age": 0}  # survives a restart
        assert box.bytes() == 9 * 101  # recomputed from the file


def test_bytes_limit_spares_in_flight(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_bytes=500, max_age_s=WEEK) as box:
        for i in range(4):
            box.put("t", bytes(100), msg_id=f"m{i}")
        box.mark_in_flight(["m0"])
        box.put("t", bytes(100), msg_id="m4")
        box.put("t", bytes(100), msg_id="m5")
        ids = [i.msg_id for i in box.take_unsent(10)]
        assert "m1" not in ids and "m2" not in ids  # the oldest not in flight went first
        assert box.ack("m0") is True  # the in-flight one was kept
        assert box.dropped()["bytes"] == 2


def test_age_limit_drops_expired_and_counts(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_bytes=BIG, max_age_s=60.0, clock=clock) as box:
        box.put("t", b"old1", msg_id="old1")
        box.put("t", b"old2", msg_id="old2")
        box.mark_in_flight(["old2"])
        clock.now += 30
        box.put("t", b"new", msg_id="new")
        clock.now += 31  # old ones are now 61 s old, "new" 31 s
        assert [i.msg_id for i in box.take_unsent(10)] == ["new"]
        assert box.dropped() == {"bytes": 0, "age": 1}
        assert box.ack("old2") is True  # in flight: not expired under the publisher's feet
        assert box.oldest_age_s() == pytest.approx(31.0)
        clock.now -= 3600  # clock stepped back (no RTC before NTP): nothing expires
        assert box.enforce_limits() == {"age": 0, "bytes": 0}
    with Outbox(path, max_bytes=BIG, max_age_s=60.0, clock=clock) as box:
        assert box.dropped()["age"] == 1


def test_threads_put_concurrently(box: Outbox) -> None:
    def worker(n: int) -> None:
        for i in range(50):
            box.put("t", b"x", msg_id=f"{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert box.depth() == 200
    assert len({i.msg_id for i in box.take_unsent(1000)}) == 200


def test_second_process_or_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_bytes=BIG, max_age_s=WEEK), pytest.raises(OutboxError, match="in use"):
        Outbox(path, max_bytes=BIG, max_age_s=WEEK)
    Outbox(path, max_bytes=BIG, max_age_s=WEEK).close()  # released on close


def test_not_an_outbox_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"garbage\.sqlite3"):
        Outbox(path, max_bytes=BIG, max_age_s=WEEK)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="max_bytes"):
        Outbox(tmp_path / "o", max_bytes=0, max_age_s=WEEK)
    with Outbox(tmp_path / "o", max_bytes=BIG, max_age_s=WEEK) as box:
        with pytest.raises(OutboxError, match="qos"):
            box.put("t", b"x", 3, msg_id="m")
        with pytest.raises(OutboxError, match="msg_id"):
            box.put("t", b"x", msg_id="")
    with pytest.raises(OutboxError, match="after close"):
        box.depth()


_CHILD = textwrap.dedent(
    """
    import sys
    from edge_agent.outbox import Outbox
    box = Outbox(sys.argv[1], max_bytes=1 << 30, max_age_s=3600, synchronous=sys.argv[2])
    i = 0
    while True:
        box.put("t/c", b"payload-%d" % i, msg_id="m%d" % i)
        print("m%d" % i, flush=True)  # only after put() returned
        i += 1
    """
)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_put_survives_sigkill(tmp_path: Path, synchronous: str) -> None:
    """Every put() that returned before a SIGKILL is in the file afterwards (WAL, any mode)."""
    path = tmp_path / "o.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), synchronous],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    confirmed = []
    try:
        for line in child.stdout:
            confirmed.append(line.strip())
            if len(confirmed) >= 40:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert len(confirmed) == 40
    with Outbox(path, max_bytes=1 << 30, max_age_s=3600) as box:  # lock died with the child
        stored = {i.msg_id: i.payload for i in box.take_unsent(100_000)}
    for msg_id in confirmed:
        assert msg_id in stored, f"{msg_id} was confirmed by put() but lost by SIGKILL"
        assert stored[msg_id] == b"payload-" + msg_id[1:].encode()


def test_full_disk_is_a_typed_error_and_loses_nothing_stored(box: Outbox) -> None:
    box.put("t", b"kept", msg_id="kept")
    # SQLite's page limit stands in for a full disk (the same SQLITE_FULL error).
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(OutboxError, match="disk"):
        box.put_many(("t", bytes(50_000), 1, f"big{i}") for i in range(4))
    assert box.bytes() == len(b"kept") + 1  # the failed batch left no trace
    assert [i.msg_id for i in box.take_unsent(10)] == ["kept"]


# --------------------------------------------------------------------- full disk
class _FailingDeletes:
    """The outbox's connection, with DELETEs refused as on a full disk (WAL needs space)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.failing and sql.lstrip().upper().startswith("DELETE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def _set_page_limit(box: Outbox, extra_pages: int) -> None:
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_full_database_is_back_pressure_not_loss(tmp_path: Path, caplog) -> None:
    """SQLITE_FULL (here from max_page_count, no privileges needed) refuses puts with a typed
    error, releases the reserve, keeps deliveries and acks going, and recovers by itself."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_bytes=BIG, max_age_s=WEEK, reserve_bytes=64 * 1024) as box:
        assert box.reserve_path.stat().st_size == 64 * 1024
        box.put_many(("t", b"x" * 100, 1, f"m{i}") for i in range(5))
        _set_page_limit(box, 0)
        with pytest.raises(OutboxFullError, match="free space"):
            box.put_many(("t", bytes(50_000), 1, f"big{i}") for i in range(4))
        health = box.health()
        assert health.full and health.full_since is not None and "full" in (health.error or "")
        assert not box.reserve_path.exists()  # released for the deletes
        assert "outbox file system full" in caplog.text
        # Delivery goes on: take, ack (a delete), take again: nothing comes twice.
        first = box.take_unsent(3)
        assert box.ack_many([i.msg_id for i in first]) == 3
        assert [i.msg_id for i in box.take_unsent(10)] == ["m3", "m4"]
        assert box.depth() == 2
        _set_page_limit(box, 1000)  # space returns
        box.put("t", b"after", msg_id="after")
        assert not box.health().full and box.health().reserve_in_place
        assert "writable again" in caplog.text
        assert [i.msg_id for i in box.take_unsent(10)] == ["m3", "m4", "after"]


def test_acked_message_whose_delete_fails_is_not_sent_again(
    box: Outbox, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    box.put_many(("t", b"p", 1, f"m{i}") for i in range(4))
    taken = box.take_unsent(3)
    box.mark_in_flight(i.msg_id for i in taken)
    failing = _FailingDeletes(box._db)
    monkeypatch.setattr(box, "_db", failing)
    assert box.ack_many(["m0", "m1", "m2"]) == 3  # delivered, whatever the file says
    assert "cannot delete 3 acknowledged messages" in caplog.text
    assert box.health().acked_unremoved == 3
    assert box.depth() == 1 and box.bytes() == 2
    assert box.in_flight_count() == 0
    for _ in range(3):  # the pump asks again and again: m0..m2 never come back
        assert [i.msg_id for i in box.take_unsent(10)] == ["m3"]
    failing.failing = False
    monkeypatch.setattr("edge_agent.outbox_disk._RETRY_DELETES_EVERY_S", 0.0)
    assert [i.msg_id for i in box.take_unsent(10)] == ["m3"]  # retried the delete first
    assert box.health().acked_unremoved == 0
    assert box._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


def test_reserve_is_optional_and_validated(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="reserve_bytes"):
        Outbox(tmp_path / "o", max_bytes=BIG, max_age_s=WEEK, reserve_bytes=-1)
    with Outbox(tmp_path / "o", max_bytes=BIG, max_age_s=WEEK, reserve_bytes=0) as box:
        assert not box.reserve_path.exists()
        _set_page_limit(box, 0)
        with pytest.raises(OutboxFullError):
            box.put("t", bytes(20_000), msg_id="big")
        _set_page_limit(box, 100)
        box.put("t", b"small", msg_id="small")  # no reserve to restore: retried at once
        assert not box.health().full


def test_space_returns_to_the_file_system_as_the_outbox_drains(box: Outbox) -> None:
    box.put_many(("t", bytes(3000), 1, f"m{i}") for i in range(1000))
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    big = box.path.stat().st_size
    box.ack_many(f"m{i}" for i in range(1000))
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert box.path.stat().st_size < big / 10  # incremental vacuum, not a free list


def test_real_full_file_system_delivers_everything_once_and_recovers(tmp_path: Path) -> None:
    """The reported defect on a real tmpfs: the outbox fills the disk itself, then acks need
    space too. Everything stored is delivered exactly once, puts wait, then resume."""
    with small_filesystem(tmp_path / "fs", 3 * 1024 * 1024) as fs:
        box = Outbox(fs / "o.sqlite3", max_bytes=BIG, max_age_s=WEEK, reserve_bytes=512 * 1024)
        try:
            stored: list[str] = []
            with pytest.raises(OutboxFullError):
                for n in range(10_000):
                    batch = [f"m{n}-{j}" for j in range(8)]
                    box.put_many(("t/c", os.urandom(1500), 1, m) for m in batch)
                    stored += batch
            assert len(stored) > 100 and box.health().full
            fill(fs)  # and whatever the reserve's release left is taken by someone else
            with pytest.raises(OutboxFullError):
                box.put("t/c", b"refused", msg_id="refused")
            delivered: list[str] = []
            for _ in range(1000):
                items = box.take_unsent(64)
                if not items:
                    break
                box.mark_in_flight(i.msg_id for i in items)
                delivered += [i.msg_id for i in items]
                box.ack_many(i.msg_id for i in items)
            assert sorted(delivered) == sorted(stored)  # each once: no storm of duplicates
            assert box.depth() == 0
            for ballast in fs.glob("ballast-*"):
                ballast.unlink()  # space returns
            box.put("t/c", b"after", msg_id="after")
            assert not box.health().full and box.health().reserve_in_place
            assert [i.msg_id for i in box.take_unsent(10)] == ["after"]
        finally:
            box.close()


def test_outbox_opens_on_a_full_file_system(tmp_path: Path) -> None:
    """A restart while the disk is full: the agent must start (no crash loop) and deliver."""
    with small_filesystem(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        path = fs / "o.sqlite3"
        with Outbox(path, max_bytes=BIG, max_age_s=WEEK, reserve_bytes=256 * 1024) as box:
            box.put_many(("t", b"x" * 200, 1, f"m{i}") for i in range(20))
        fill(fs)
        with Outbox(path, max_bytes=BIG, max_age_s=WEEK, reserve_bytes=256 * 1024) as box:
            assert box.health().full
            items = box.take_unsent(100)
            assert len(items) == 20
            assert box.ack_many(i.msg_id for i in items) == 20
            assert box.depth() == 0
