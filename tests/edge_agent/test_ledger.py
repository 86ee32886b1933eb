from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edge_agent.ledger import Entry, FileKey, Ledger, LedgerError


def test_seen_done_pending_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ledger.sqlite3"
    a, b = FileKey("/in/a.png", 10, 1), FileKey("/in/b.png", 20, 2)
    ledger = Ledger(db)
    assert ledger.state(a) is None
    ledger.mark_seen(a)
    ledger.mark_seen(b)
    ledger.mark_done([a])
    ledger.mark_seen(a)  # seen again after done: stays done
    ledger.close()
    ledger = Ledger(db)
    assert ledger.state(a) == "done" and ledger.state(b) == "seen"
    assert ledger.pending() == [b]
    # the same name with another size or mtime is a new input
    assert ledger.state(FileKey("/in/a.png", 10, 3)) is None
    ledger.close()


def test_key_of_file(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"12345")
    key = FileKey.of(p)
    assert key.path == str(p) and key.size == 5 and key.mtime_ns == p.stat().st_mtime_ns


def test_forget_gone_keeps_files_still_there(tmp_path: Path) -> None:
    kept, gone = tmp_path / "kept.png", tmp_path / "gone.png"
    kept.write_bytes(b"1")
    gone.write_bytes(b"2")
    ledger = Ledger(tmp_path / "l.db")
    ledger.mark_done([FileKey.of(kept), FileKey.of(gone)])
    gone.unlink()
    assert ledger.forget_gone(older_than_s=0.0) == 1
    assert ledger.state(FileKey.of(kept)) == "done"


def test_decodes_that_never_ended_are_counted_across_restarts(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    a, b = FileKey("/in/a.png", 10, 1), FileKey("/in/b.png", 20, 2)
    ledger = Ledger(db)
    ledger.mark_seen(a)
    ledger.mark_seen(b)
    assert ledger.entry(a) == Entry("seen", 0)
    ledger.begin_decode(a)  # the agent dies in it ...
    ledger.close()
    ledger = Ledger(db)
    ledger.begin_decode(a)  # ... and again after a restart
    ledger.begin_decode(b)
    ledger.end_decode(b)  # b decoded fine, then the agent was stopped before it was done
    ledger.close()
    ledger = Ledger(db)
    assert ledger.entry(a) == Entry("seen", 2)
    assert ledger.entry(b) == Entry("seen", 0)  # retried, not suspected
    ledger.end_decode(b)  # never below zero
    assert ledger.entry(b) == Entry("seen", 0)
    assert ledger.entry(FileKey("/in/new.png", 1, 1)) is None
    ledger.close()


def test_rejected_is_an_end_state_and_forgotten_when_gone(tmp_path: Path) -> None:
    left = tmp_path / "left.png"
    left.write_bytes(b"x")
    ledger = Ledger(tmp_path / "l.db")
    key = FileKey.of(left)
    ledger.mark_seen(key)
    ledger.mark_rejected(key)
    assert ledger.state(key) == "rejected" and ledger.pending() == []
    assert ledger.forget_gone(older_than_s=0.0) == 0  # still there: kept, not retried
    left.unlink()
    assert ledger.forget_gone(older_than_s=0.0) == 1


def test_a_ledger_of_the_previous_schema_is_migrated_with_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE files (path TEXT NOT NULL, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL, state TEXT NOT NULL CHECK (state IN ('seen', 'done')), "
        "seen_at REAL NOT NULL, done_at REAL, PRIMARY KEY (path, size, mtime_ns))"
    )
    con.execute("INSERT INTO files VALUES ('/in/a.png', 1, 1, 'done', 1.0, 2.0)")
    con.execute("INSERT INTO files VALUES ('/in/b.png', 2, 2, 'seen', 1.0, NULL)")
    con.commit()
    con.close()
    ledger = Ledger(db)
    assert ledger.entry(FileKey("/in/a.png", 1, 1)) == Entry("done", 0)
    assert ledger.entry(FileKey("/in/b.png", 2, 2)) == Entry("seen", 0)
    ledger.mark_rejected(FileKey("/in/b.png", 2, 2))  # the new state is allowed
    ledger.close()
    assert Ledger(db).state(FileKey("/in/b.png", 2, 2)) == "rejected"


def test_a_ledger_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(LedgerError, match="newer than this agent"):
        Ledger(db)


def test_key_of_a_link_is_the_link_itself(tmp_path: Path) -> None:
    target = tmp_path / "big"
    target.write_bytes(b"0123456789")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    key = FileKey.of(link)
    assert key.size == os.lstat(link).st_size != 10


def test_a_name_that_is_not_utf8_is_stored_and_given_back_as_the_same_path(tmp_path: Path) -> None:
    """Linux names are bytes: SQLite cannot bind the surrogate escapes of a Latin-1 name, which
    killed the folder's feeder thread (the fault suite's not_utf8 case)."""
    from edge_agent.ledger import stored, unstored

    name = tmp_path / os.fsdecode(b"latin1-\xe9t\xe9.png")
    name.write_bytes(b"x")
    key = FileKey.of(name)
    assert stored(key.path) != key.path and unstored(stored(key.path)) == key.path
    assert stored(str(tmp_path / "plain.png")) == str(tmp_path / "plain.png")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.mark_seen(key)
    assert ledger.state(key) == "seen"
    assert ledger.pending() == [key]
    assert os.path.exists(ledger.pending()[0].path)  # the path the file system knows
    ledger.mark_done([key])
    assert ledger.state(key) == "done" and ledger.pending() == []
    ledger.close()
