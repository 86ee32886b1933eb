"""The ledger on a full disk (the default layout shares it with the outbox): no thread dies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.ledger import FileKey, Ledger


def _key(i: int) -> FileKey:
    return FileKey(f"/in/{i:06d}-{'x' * 200}.png", 1000 + i, 10**18 + i)


def test_end_states_are_kept_in_memory_until_the_disk_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL, no privileges
    with caplog.at_level(logging.WARNING, logger="edge_agent.ledger"):
        seen = 0
        for i in range(200):  # fill it: the marks that no longer fit are skipped, not raised
            ledger.mark_seen(_key(i))
            ledger.begin_decode(_key(i))
            ledger.end_decode(_key(i))
            seen += 1
        assert seen == 200
        failures = [r for r in caplog.records if "ledger seen mark failed" in r.getMessage()]
        assert len(failures) == 1  # rate-limited
        full_key = _key(199)
        assert ledger.entry(full_key) is None  # its seen mark did not fit
        ledger.mark_done([full_key, _key(0)])
        ledger.mark_rejected(_key(1))
        assert ledger.state(full_key) == "done"  # answered from memory
        assert ledger.state(_key(1)) == "rejected"
        assert full_key in ledger._unwritten  # a new row: it cannot have fitted
        ledger._db.execute("PRAGMA max_page_count = 100000")  # room again
        monkeypatch.setattr("edge_agent.ledger._RETRY_EVERY_S", 0.0)
        ledger.mark_seen(_key(500))  # any later write flushes what waited
        assert "ledger writable again" in caplog.text
    assert not ledger._unwritten
    row = ledger._db.execute("SELECT state FROM files WHERE path=?", (full_key.path,)).fetchone()
    assert row == ("done",)
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.sqlite3")
    assert reopened.state(full_key) == "done" and reopened.state(_key(1)) == "rejected"
    reopened.close()


def test_other_database_errors_still_raise(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger._db.execute("DROP TABLE files")
    with pytest.raises(Exception, match="no such table"):
        ledger.mark_done([_key(1)])
    ledger.close()
