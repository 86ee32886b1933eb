"""The catalogue's tables, defined once (each database passes the names of its column types),
and the statements that write their rows.

Rows are unique on (device, id) in every table a message lands in, so a replayed message is an
``ON CONFLICT DO NOTHING`` whichever writer gets it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The classification columns a query returns and an export writes, in order, before the last
# one, ``has_thumbnail`` (computed, not stored).
_CLASSIFICATION = (
    "device", "id", "source", "frame_ref", "received_at", "classified_at", "label", "class_id",
    "confidence", "uncertain", "probabilities", "model_name", "model_sha256", "model_precision",
    "ra", "dec", "x", "y", "frame_id",
)  # fmt: skip

# The columns a query returns and an export writes, in order.
COLUMNS = (*_CLASSIFICATION, "has_thumbnail")

# The columns a new classification row is written with.
CLASSIFICATION_INSERT = (*_CLASSIFICATION, "schema_version", "payload", "stored_at")


@dataclass(frozen=True)
class ColumnTypes:
    """How one database spells the types of the catalogue's columns."""

    time: str  # a point in time (SQLite: ISO 8601 text, fixed width, so text order is time order)
    small_int: str
    real: str
    boolean: str
    reals: str  # an array of floats (SQLite: JSON text)
    json: str
    blob: str
    serial_key: str  # an auto-incrementing integer primary key


def ddl(t: ColumnTypes) -> str:
    """Every table and index of the catalogue, created only where missing."""
    return f"""
CREATE TABLE IF NOT EXISTS classifications (
    device TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, frame_ref TEXT NOT NULL,
    received_at {t.time}, classified_at {t.time} NOT NULL, label TEXT NOT NULL,
    class_id {t.small_int} NOT NULL, confidence {t.real} NOT NULL, uncertain {t.boolean} NOT NULL,
    probabilities {t.reals}, model_name TEXT, model_sha256 TEXT, model_precision TEXT,
    ra {t.real}, dec {t.real}, x {t.real}, y {t.real},
    frame_id TEXT, schema_version INTEGER NOT NULL, payload {t.json} NOT NULL,
    stored_at {t.time} NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE INDEX IF NOT EXISTS classifications_time ON classifications (classified_at);
CREATE INDEX IF NOT EXISTS classifications_label ON classifications (label);
CREATE TABLE IF NOT EXISTS thumbnails (
    device TEXT NOT NULL, id TEXT NOT NULL, jpeg {t.blob} NOT NULL, stored_at {t.time} NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS errors (
    device TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, frame_ref TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, quarantined_to TEXT, at {t.time},
    payload {t.json} NOT NULL, stored_at {t.time} NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, state TEXT, agent_version TEXT, model TEXT, status_at {t.time},
    status_payload TEXT, stats_at {t.time}, stats_payload TEXT, last_seen {t.time}
);
CREATE TABLE IF NOT EXISTS messages (
    seq {t.serial_key}, device TEXT NOT NULL, kind TEXT NOT NULL, id TEXT,
    payload {t.json} NOT NULL, stored_at {t.time} NOT NULL, UNIQUE (device, kind, id)
);
CREATE TABLE IF NOT EXISTS rejected (
    seq {t.serial_key}, received_at {t.time} NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload {t.blob} NOT NULL
);
"""


# The statements that write rows, with ``?`` placeholders (``Store._sql`` adapts them).
INSERT_CLASSIFICATION = (
    f"INSERT INTO classifications ({', '.join(CLASSIFICATION_INSERT)}) "
    f"VALUES ({', '.join('?' * len(CLASSIFICATION_INSERT))}) "
    "ON CONFLICT (device, id) DO NOTHING"
)
INSERT_ERROR = (
    "INSERT INTO errors (device, id, source, frame_ref, reason, detail, "
    "quarantined_to, at, payload, stored_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device, id) DO NOTHING"
)
UPSERT_STATUS = (
    "INSERT INTO devices (device, state, agent_version, model, status_at, "
    "status_payload, last_seen) VALUES (?,?,?,?,?,?,?) "
    "ON CONFLICT (device) DO UPDATE SET state = excluded.state, "
    "agent_version = COALESCE(excluded.agent_version, devices.agent_version), "
    "model = COALESCE(excluded.model, devices.model), "
    "status_at = COALESCE(excluded.status_at, devices.status_at), "
    "status_payload = COALESCE(excluded.status_payload, devices.status_payload), "
    "last_seen = excluded.last_seen"
)
UPSERT_STATS = (
    "INSERT INTO devices (device, stats_at, stats_payload, last_seen) "
    "VALUES (?,?,?,?) ON CONFLICT (device) DO UPDATE SET "
    "stats_at = excluded.stats_at, stats_payload = excluded.stats_payload, "
    "last_seen = excluded.last_seen"
)
INSERT_THUMBNAIL = (
    "INSERT INTO thumbnails (device, id, jpeg, stored_at) VALUES (?,?,?,?) "
    "ON CONFLICT (device, id) DO NOTHING"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (device, kind, id, payload, stored_at) "
    "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING"
)
INSERT_REJECTED = "INSERT INTO rejected (received_at, topic, reason, payload) VALUES (?,?,?,?)"
