"""The observatory-wide catalogue: PostgreSQL, with the q3c sky index for cone searches.

Several writers (one per shared-subscription member) write here at once; the primary key on
(device, id) makes each result one row whichever writer stores it and however often it comes.
q3c (Debian ``postgresql-15-q3c``) indexes ``q3c_ang2ipix(ra, dec)`` and answers
``q3c_radial_query``; without the extension the catalogue still works and a cone search falls
back to an exact distance over a declination band (and says so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from catalogue.errors import StoreError
from catalogue.store.base import Store, iso
from catalogue.store.query import Cone
from catalogue.store.schema import ColumnTypes, ddl

log = logging.getLogger(__name__)

_DDL = ddl(ColumnTypes(
    time="TIMESTAMPTZ", small_int="SMALLINT", real="DOUBLE PRECISION", boolean="BOOLEAN",
    reals="DOUBLE PRECISION[]", json="JSONB", blob="BYTEA", serial_key="BIGSERIAL PRIMARY KEY",
))  # fmt: skip
_Q3C_INDEX = (
    "CREATE INDEX IF NOT EXISTS classifications_q3c ON classifications "
    "(q3c_ang2ipix(ra, dec)) WHERE ra IS NOT NULL"
)
_DDL_LOCK = 0x6761_6C61_7879  # advisory lock: two writers starting at once create tables once


class PostgresStore(Store):
    ph = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._db = psycopg.connect(url, autocommit=False)
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                self._db.execute(_DDL)
            self.q3c = self._try_q3c()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL catalogue {_redact(url)}: {exc}") from exc

    def _try_q3c(self) -> bool:
        try:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                self._db.execute("CREATE EXTENSION IF NOT EXISTS q3c")
                self._db.execute(_Q3C_INDEX)
            return True
        except psycopg.Error as exc:
            log.warning(
                "q3c is not available in %s (%s); cone searches scan a declination band. "
                "Install postgresql-15-q3c (Debian) and run CREATE EXTENSION q3c as a superuser",
                _redact(self.url),
                str(exc).splitlines()[0],
            )
            return False

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self._db.cursor() as cur:
            cur.executemany(sql, rows)
            return int(cur.rowcount)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        self._db.rollback()  # end the read transaction: no idle-in-transaction connections
        return rows

    def _commit(self) -> None:
        self._db.commit()

    def _rollback(self) -> None:
        if not self._db.closed:
            self._db.rollback()

    def close(self) -> None:
        self._db.close()

    def is_row_error(self, exc: BaseException) -> bool:
        return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))

    def alive(self) -> bool:
        if self._db.closed or self._db.broken:
            return False
        try:
            self._db.execute("SELECT 1").fetchall()
            self._db.rollback()
            return True
        except psycopg.Error:
            return False

    def _ts(self, dt: datetime | None) -> Any:
        return dt

    def _ts_out(self, value: Any) -> str | None:
        return iso(value) if isinstance(value, datetime) else value

    def _probs(self, probs: tuple[float, ...] | None) -> Any:
        return None if probs is None else list(probs)

    def _probs_out(self, value: Any) -> list[float] | None:
        return None if value is None else [float(p) for p in value]

    def _blob(self, data: bytes) -> Any:
        return bytes(data)

    def _cone_sql(self, cone: Cone) -> tuple[str, list[Any]]:
        if self.q3c:
            return "q3c_radial_query(c.ra, c.dec, %s, %s, %s)", [cone.ra, cone.dec, cone.radius]
        lo, hi = max(-90.0, cone.dec - cone.radius), min(90.0, cone.dec + cone.radius)
        return (
            "c.dec BETWEEN %s AND %s AND degrees(2 * asin(least(1, sqrt("
            "sin(radians(c.dec - %s) / 2) ^ 2 + cos(radians(c.dec)) * cos(radians(%s)) * "
            "sin(radians(c.ra - %s) / 2) ^ 2)))) <= %s",
            [lo, hi, cone.dec, cone.dec, cone.ra, cone.radius],
        )


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparseable URL)"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))
