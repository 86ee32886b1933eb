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
from catalogue.store.base import Store, iso
from catalogue.store.query import Cone, angular_separation
from catalogue.store.schema import ColumnTypes, ddl

_DDL = ddl(ColumnTypes(
    time="TEXT", small_int="INTEGER", real="REAL", boolean="INTEGER", reals="TEXT", json="TEXT",
    blob="BLOB", serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
)) + (
    # No sky index: a cone search narrows on declination first.
    "CREATE INDEX IF NOT EXISTS classifications_dec ON classifications (dec) "
    "WHERE dec IS NOT NULL;\n"
)  # fmt: skip


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
