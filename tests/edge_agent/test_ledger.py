from __future__ import annotations

from pathlib import Path

from edge_agent.ledger import FileKey, Ledger


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
