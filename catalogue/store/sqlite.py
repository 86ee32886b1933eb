"""The default catalogue: one SQLite file (WAL), nothing to install.

A cone search has no sky index here: it narrows on declination with an index, then keeps the
rows whose great-circle distance (a SQL function registered from Python) is within the radius.
Fine for the rows one observatory's devices make; PostgreSQL with q3c is for more.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from catalogue.errors import StoreError
from catalogue.store.base import Cone, Store, angular_separation, iso

_DDL = """
CREATE TABLE IF NOT EXISTS classifications (
    device TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, frame_ref TEXT NOT NULL,
    received_at TEXT, classified_at TEXT NOT NULL, label TEXT NOT NULL,
    class_id INTEGER NOT NULL, confidence REAL NOT NULL, uncertain INTEGER NOT NULL,
    probabilities TEXT, model_name TEXT, model_sha256 TEXT, model_precision TEXT,
    ra REAL, dec REAL, x REAL, y REAL, frame_id TEXT,
    schema_version INTEGER NOT NULL, payload TEXT NOT NULL, stored_at TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE INDEX IF NOT EXISTS classifications_time ON classifications (classified_at);
CREATE INDEX IF NOT EXISTS classifications_label ON classifications (label);
CREATE INDEX IF NOT EXISTS classifications_dec ON classifications (dec) WHERE dec IS NOT NULL;
CREATE TABLE IF NOT EXISTS thumbnails (
    device TEXT NOT NULL, id TEXT NOT NULL, jpeg BLOB NOT NULL, stored_at TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS errors (
    device TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, frame_ref TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, quarantined_to TEXT, at TEXT,
    payload TEXT NOT NULL, stored_at TEXT NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, state TEXT, agent_version TEXT, model TEXT, status_at TEXT,
    status_payload TEXT, stats_at TEXT, stats_payload TEXT, last_seen TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind TEXT NOT NULL, id TEXT,
    payload TEXT NOT NULL, stored_at TEXT NOT NULL, UNIQUE (device, kind, id)
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload BLOB NOT NULL
);
"""


class SqliteStore(Store):
    ph = "?"

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.path = Path(path)
        try:
            if self.path.parent:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level="DEFERRED", check_same_thread=False
            )  # handed from the thread that opens it to the one that writes, never shared
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed batch survives a crash of the writer (not of the
            # OS, whose last transactions may roll back; the broker redelivers those only
            # if they were not yet acknowledged, so the writer acks after the commit).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_DDL)
            self._db.create_function("ang_sep", 4, angular_separation, deterministic=True)
            self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the SQLite catalogue {self.path}: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(self._db.executemany(sql, rows).rowcount)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, params).fetchall())

    def _commit(self) -> None:
        self._db.commit()

    def _rollback(self) -> None:
        self._db.rollback()

    def close(self) -> None:
        self._db.close()

    def is_row_error(self, exc: BaseException) -> bool:
        return isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, OverflowError))

    def alive(self) -> bool:
        try:
            self._db.execute("SELECT 1").fetchall()
            return True
        except sqlite3.Error:
            return False

    def _ts(self, dt: datetime | None) -> Any:
        return iso(dt)  # fixed width with Z: text order is time order

    def _ts_out(self, value: Any) -> str | None:
        return value if value is None else str(value)

    def _probs(self, probs: tuple[float, ...] | None) -> Any:
        return None if probs is None else json.dumps(list(probs))

    def _probs_out(self, value: Any) -> list[float] | None:
        return None if value is None else [float(p) for p in json.loads(value)]

    def _blob(self, data: bytes) -> Any:
        return sqlite3.Binary(data)

    def _cone_sql(self, cone: Cone) -> tuple[str, list[Any]]:
        lo, hi = max(-90.0, cone.dec - cone.radius), min(90.0, cone.dec + cone.radius)
        return (
            "c.dec BETWEEN ? AND ? AND ang_sep(c.ra, c.dec, ?, ?) <= ?",
            [lo, hi, cone.ra, cone.dec, cone.radius],
        )
