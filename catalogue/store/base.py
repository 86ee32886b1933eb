"""What every catalogue database offers: one transaction per batch, queries, the page's views.

SQLite and PostgreSQL share the SQL here and in ``schema``; each subclass supplies its tables
(``schema.ddl`` with its column types), parameter style and cone search. Rows are unique on
(device, id): a replayed message is an ``ON CONFLICT DO NOTHING``, so at-least-once delivery
becomes exactly-once storage whichever writer gets it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from catalogue.messages import (
    Classification,
    DeviceStats,
    DeviceStatus,
    ErrorReport,
    OtherMessage,
    Record,
    Thumbnail,
)
from catalogue.store.page import PageState, stats_summary
from catalogue.store.query import Cone, Query
from catalogue.store.schema import (
    COLUMNS,
    INSERT_CLASSIFICATION,
    INSERT_ERROR,
    INSERT_MESSAGE,
    INSERT_REJECTED,
    INSERT_THUMBNAIL,
    UPSERT_STATS,
    UPSERT_STATUS,
)


@dataclass(frozen=True)
class Rejected:
    """A message stored aside: its topic, bytes and why it was not catalogued."""

    topic: str
    payload: bytes
    reason: str


@dataclass
class WriteCounts:
    stored: int = 0  # new classification / error rows
    duplicates: int = 0  # rows that were already there (a replay)
    rejected: int = 0
    other: int = 0  # status, stats, thumbnails, other kinds

    def add(self, more: WriteCounts) -> None:
        self.stored += more.stored
        self.duplicates += more.duplicates
        self.rejected += more.rejected
        self.other += more.other


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """The agent's own format: ISO 8601 UTC with milliseconds and a ``Z``."""
    if dt is None:
        return None
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Store(ABC):
    """A catalogue database. Not thread-safe: one per thread (the writer, each page server)."""

    url: str
    ph = "?"  # parameter placeholder of the driver

    # --- dialect ----------------------------------------------------------------------------
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def alive(self) -> bool:
        """Whether the connection still works (after a failed write: a bad row or a lost link)."""

    @abstractmethod
    def is_row_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing these values (not a lost or broken link)."""

    @abstractmethod
    def _ts(self, dt: datetime | None) -> Any:
        """A time as the driver stores it."""

    @abstractmethod
    def _ts_out(self, value: Any) -> str | None:
        """A stored time as an ISO string."""

    @abstractmethod
    def _probs(self, probs: tuple[float, ...] | None) -> Any: ...

    @abstractmethod
    def _probs_out(self, value: Any) -> list[float] | None: ...

    @abstractmethod
    def _blob(self, data: bytes) -> Any: ...

    @abstractmethod
    def _cone_sql(self, cone: Cone) -> tuple[str, list[Any]]:
        """A WHERE fragment selecting rows inside the cone (exact)."""

    def _sql(self, text: str) -> str:
        return text if self.ph == "?" else text.replace("?", self.ph)

    # --- writing ----------------------------------------------------------------------------
    def write(self, records: Iterable[Record], rejected: Iterable[Rejected] = ()) -> WriteCounts:
        """Store one batch in one transaction; raises :class:`StoreError` and rolls back."""
        counts = WriteCounts()
        now = self._ts(utc_now())
        cls_rows, err_rows, thumbs, others = [], [], [], []
        statuses: dict[str, DeviceStatus] = {}
        stats: dict[str, DeviceStats] = {}
        for r in records:
            if isinstance(r, Classification):
                cls_rows.append(
                    (
                        r.device, r.id, r.source, r.frame_ref, self._ts(r.received_at),
                        self._ts(r.classified_at), r.label, r.class_id, r.confidence,
                        r.uncertain, self._probs(r.probabilities), r.model_name,
                        r.model_sha256, r.model_precision, r.ra, r.dec, r.x, r.y, r.frame_id,
                        r.schema_version, r.payload, now,
                    )
                )  # fmt: skip
            elif isinstance(r, ErrorReport):
                err_rows.append(
                    (
                        r.device, r.id, r.source, r.frame_ref, r.reason, r.detail,
                        r.quarantined_to, self._ts(r.at), r.payload, now,
                    )
                )  # fmt: skip
            elif isinstance(r, DeviceStatus):  # the last state of a batch wins; a plain
                prev = statuses.get(r.device)  # "online" keeps what a JSON status said
                if prev is not None and r.agent_version is None:
                    r = DeviceStatus(
                        r.device, r.state, prev.agent_version, prev.model, prev.at, prev.payload
                    )
                statuses[r.device] = r
            elif isinstance(r, DeviceStats):
                stats[r.device] = r
            elif isinstance(r, Thumbnail):
                thumbs.append((r.device, r.id, self._blob(r.jpeg), now))
            elif isinstance(r, OtherMessage):
                others.append((r.device, r.kind, r.id, r.payload, now))
        rej_rows = [(now, j.topic, j.reason, self._blob(j.payload)) for j in rejected]
        try:
            # A row already there (a replay) is a duplicate, not an error.
            for statement, rows in ((INSERT_CLASSIFICATION, cls_rows), (INSERT_ERROR, err_rows)):
                if rows:
                    n = self._executemany(self._sql(statement), rows)
                    counts.stored += n
                    counts.duplicates += len(rows) - n
            for s in statuses.values():
                self._execute(
                    self._sql(UPSERT_STATUS),
                    (
                        s.device,
                        s.state,
                        s.agent_version,
                        s.model,
                        self._ts(s.at),
                        s.payload if s.agent_version is not None else None,
                        now,
                    ),
                )
            for st in stats.values():
                self._execute(
                    self._sql(UPSERT_STATS),
                    (st.device, self._ts(st.at), st.payload, now),
                )
            for statement, more in (
                (INSERT_THUMBNAIL, thumbs),
                (INSERT_MESSAGE, others),
                (INSERT_REJECTED, rej_rows),
            ):
                if more:
                    self._executemany(self._sql(statement), more)
            self._commit()
        except Exception:
            self._rollback()
            raise
        counts.rejected = len(rej_rows)
        counts.other = len(statuses) + len(stats) + len(thumbs) + len(others)
        return counts

    # --- reading ----------------------------------------------------------------------------
    def query(self, q: Query) -> list[dict[str, Any]]:
        """Classifications matching every given criterion, oldest first (or newest first)."""
        where, params = [], []
        if q.cone is not None:
            frag, p = self._cone_sql(q.cone)
            where.append(frag)
            params += p
        if q.label is not None:
            where.append("c.label = ?")
            params.append(q.label)
        if q.device is not None:
            where.append("c.device = ?")
            params.append(q.device)
        if q.since is not None:
            where.append("c.classified_at >= ?")
            params.append(self._ts(q.since))
        if q.until is not None:
            where.append("c.classified_at < ?")
            params.append(self._ts(q.until))
        if q.min_confidence is not None:
            where.append("c.confidence >= ?")
            params.append(q.min_confidence)
        sql = (
            f"SELECT {', '.join('c.' + c for c in COLUMNS[:-1])}, "
            "(t.id IS NOT NULL) AS has_thumbnail FROM classifications c "
            "LEFT JOIN thumbnails t ON t.device = c.device AND t.id = c.id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        order = "DESC" if q.newest_first else "ASC"
        sql += f" ORDER BY c.classified_at {order}, c.device {order}, c.id {order}"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        return [self._row(r) for r in self._fetch(self._sql(sql), params)]

    def _row(self, r: Sequence[Any]) -> dict[str, Any]:
        row = dict(zip(COLUMNS, r, strict=True))
        row["received_at"] = self._ts_out(row["received_at"])
        row["classified_at"] = self._ts_out(row["classified_at"])
        row["uncertain"] = bool(row["uncertain"])
        row["has_thumbnail"] = bool(row["has_thumbnail"])
        row["probabilities"] = self._probs_out(row["probabilities"])
        return row

    def thumbnail(self, device: str, msg_id: str) -> bytes | None:
        rows = self._fetch(
            self._sql("SELECT jpeg FROM thumbnails WHERE device = ? AND id = ?"), (device, msg_id)
        )
        return bytes(rows[0][0]) if rows else None

    def count(self, table: str = "classifications") -> int:
        if table not in ("classifications", "errors", "thumbnails", "rejected", "messages"):
            raise ValueError(f"no table {table!r}")
        return int(self._fetch(f"SELECT COUNT(*) FROM {table}")[0][0])

    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._fetch(
            f"SELECT received_at, topic, reason, payload FROM rejected ORDER BY seq DESC "
            f"LIMIT {int(limit)}"
        )
        return [
            {"received_at": self._ts_out(a), "topic": t, "reason": r, "payload": bytes(p)}
            for a, t, r, p in rows
        ]

    def page_state(self, latest: int = 24, errors: int = 10) -> PageState:
        """Devices with their last status and stats, newest results, histogram, errors."""
        state = PageState()
        for dev, st, ver, model, status_at, stats, stats_at, seen in self._fetch(
            "SELECT device, state, agent_version, model, status_at, stats_payload, stats_at, "
            "last_seen FROM devices ORDER BY device"
        ):
            info: dict[str, Any] = {
                "device": dev,
                "state": st or "unknown",
                "agent_version": ver,
                "model": json.loads(model) if model else None,
                "status_at": self._ts_out(status_at),
                "stats_at": self._ts_out(stats_at),
                "last_seen": self._ts_out(seen),
            }
            info.update(stats_summary(stats))
            state.devices.append(info)
        state.latest = self.query(Query(limit=latest, newest_first=True))
        state.histogram = [
            {"class_id": int(cid), "label": label, "count": int(n)}
            for cid, label, n in self._fetch(
                "SELECT class_id, label, COUNT(*) FROM classifications "
                "GROUP BY class_id, label ORDER BY class_id"
            )
        ]
        state.errors = [
            {
                "device": d,
                "frame_ref": f,
                "reason": r,
                "detail": det,
                "at": self._ts_out(at),
            }
            for d, f, r, det, at in self._fetch(
                "SELECT device, frame_ref, reason, detail, COALESCE(at, stored_at) AS t "
                f"FROM errors ORDER BY t DESC LIMIT {int(errors)}"
            )
        ]
        state.totals = {t: self.count(t) for t in ("classifications", "errors", "rejected")}
        return state
