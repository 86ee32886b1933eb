"""The writer against a real mosquitto: replays, its own outage, bad messages, thumbnails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from catalogue_testkit import Publisher, classification, status, tiny_jpeg, to_bytes, wait_until
from mqtt_broker import MosquittoBroker

from catalogue.config import WriterSettings
from catalogue.store import open_store
from catalogue.writer import CatalogueWriter, subscriptions

pytestmark = pytest.mark.mqtt
P = "galaxy-edge"


def settings(
    broker: MosquittoBroker, db: Path, client_id: str = "writer-1", **kw: object
) -> WriterSettings:
    return WriterSettings.model_validate(
        {
            "database": f"sqlite:///{db}",
            "broker": {"host": broker.host, "port": broker.port, "client_id": client_id, **kw},
            "batch_wait_ms": 10,
        }
    )


@pytest.fixture
def publisher(mosquitto: MosquittoBroker) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()


def started(s: WriterSettings) -> CatalogueWriter:
    w = CatalogueWriter(s)
    w.start()
    assert w.wait_subscribed(10), "writer did not subscribe"
    return w


def count(db: Path, table: str = "classifications") -> int:
    store = open_store(f"sqlite:///{db}")
    try:
        return store.count(table)
    finally:
        store.close()


def test_shared_subscriptions_leave_status_unshared() -> None:
    s = WriterSettings.model_validate({"broker": {"shared_group": "cat"}})
    subs = subscriptions(s)
    assert "$share/cat/galaxy-edge/+/classifications" in subs
    assert "$share/cat/galaxy-edge/+/thumbnails/+" in subs
    assert "galaxy-edge/+/status" in subs and "galaxy-edge/+/stats" in subs  # retained: unshared


def test_an_agent_replay_is_stored_once(
    mosquitto: MosquittoBroker, publisher: Publisher, tmp_path: Path
) -> None:
    db = tmp_path / "cat.sqlite3"
    w = started(settings(mosquitto, db))
    try:
        msgs = [
            (f"{P}/dev-1/classifications", to_bytes(classification("dev-1", n))) for n in range(50)
        ]
        publisher.publish_many(msgs)
        publisher.publish_many(msgs[10:40])  # the agent's outbox replays after an outage
        assert wait_until(lambda: w.counters.snapshot()["received"] == 80), w.counters.snapshot()
        assert count(db) == 50
        snap = w.counters.snapshot()
        assert (snap["stored"], snap["duplicates"]) == (50, 30)
    finally:
        w.stop()


def test_what_was_sent_while_the_writer_was_down_arrives(
    mosquitto: MosquittoBroker, publisher: Publisher, tmp_path: Path
) -> None:
    db = tmp_path / "cat.sqlite3"
    s = settings(mosquitto, db, client_id="archive")
    w = started(s)
    publisher.publish(f"{P}/dev-1/classifications", to_bytes(classification("dev-1", 0)))
    assert wait_until(lambda: count(db) == 1)
    w.stop()  # clean DISCONNECT: the session (and its subscriptions) stays on the broker
    publisher.publish_many(
        [(f"{P}/dev-1/classifications", to_bytes(classification("dev-1", n))) for n in range(1, 40)]
    )
    assert count(db) == 1
    w2 = started(s)  # same client id: the broker delivers what it held
    try:
        assert wait_until(lambda: count(db) == 40), f"{count(db)} rows, {w2.counters.snapshot()}"
    finally:
        w2.stop()


def test_malformed_messages_are_stored_aside_and_the_writer_goes_on(
    mosquitto: MosquittoBroker, publisher: Publisher, tmp_path: Path
) -> None:
    db = tmp_path / "cat.sqlite3"
    w = started(settings(mosquitto, db))
    try:
        bad_schema = classification("dev-1", 1)
        bad_schema["class_id"] = 42
        future = classification("dev-1", 2)
        future["schema_version"] = 3
        for payload in (b"\xff not json", b"{}", to_bytes(bad_schema), to_bytes(future), b"[]"):
            publisher.publish(f"{P}/dev-1/classifications", payload)
        publisher.publish(f"{P}/dev-1/thumbnails/{'a' * 32}", b"not a jpeg")
        good = classification("dev-1", 3)
        publisher.publish(f"{P}/dev-1/classifications", to_bytes(good))
        publisher.publish(f"{P}/dev-1/thumbnails/{good['id']}", tiny_jpeg())
        publisher.publish(f"{P}/dev-1/status", to_bytes(status("dev-1")), retain=True)
        assert wait_until(lambda: count(db, "rejected") == 6 and count(db, "thumbnails") == 1)
        assert count(db) == 1
        store = open_store(f"sqlite:///{db}")
        try:
            reasons = sorted(r["reason"] for r in store.rejected())
            assert any("unknown schema_version 3" in r for r in reasons)
            assert any("schema: class_id" in r for r in reasons)
            assert any("not a JPEG" in r for r in reasons)
            assert store.query(store_query())[0]["has_thumbnail"]
            assert store.page_state().devices[0]["state"] == "online"
        finally:
            store.close()
    finally:
        w.stop()


def store_query():  # type: ignore[no-untyped-def]
    from catalogue.store import Query

    return Query()


def test_a_database_that_fails_is_retried_and_nothing_is_lost_or_set_aside(
    mosquitto: MosquittoBroker, publisher: Publisher, tmp_path: Path
) -> None:
    import sqlite3

    from catalogue.store.sqlite import SqliteStore

    db = tmp_path / "cat.sqlite3"
    writes = {"n": 0}

    class Failing(SqliteStore):  # the disk or the server, not the rows: 4 writes fail
        def write(self, records, rejected=()):  # type: ignore[no-untyped-def]
            writes["n"] += 1
            if writes["n"] <= 4:
                raise sqlite3.OperationalError("disk I/O error (test)")
            return super().write(records, rejected)

    w = CatalogueWriter(settings(mosquitto, db), store_factory=lambda url: Failing(db))
    w.start()
    try:
        assert w.wait_subscribed(10)
        publisher.publish_many(
            [
                (f"{P}/dev-1/classifications", to_bytes(classification("dev-1", n)))
                for n in range(20)
            ]
        )
        assert wait_until(lambda: count(db) == 20, 30), w.counters.snapshot()
        assert w.counters.snapshot()["store_failures"] >= 2
        assert count(db, "rejected") == 0  # a failing database does not make rows "bad"
    finally:
        w.stop()


@pytest.mark.usefixtures("mosquitto")
def test_a_row_postgres_refuses_is_set_aside_and_the_rest_stored(
    mosquitto: MosquittoBroker, publisher: Publisher, pg_url: str
) -> None:
    s = WriterSettings.model_validate(
        {
            "database": pg_url,
            "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "pg-writer"},
            "batch_wait_ms": 200,
        }
    )
    w = CatalogueWriter(s)
    w.start()
    try:
        assert w.wait_subscribed(10)
        nul = classification("dev-1", 0, frame_ref="bad\u0000name.png")  # valid JSON, not for PG
        msgs = [(f"{P}/dev-1/classifications", to_bytes(nul))]
        msgs += [
            (f"{P}/dev-1/classifications", to_bytes(classification("dev-1", n)))
            for n in range(1, 10)
        ]
        publisher.publish_many(msgs)  # one batch: the bad row must not block the other nine
        store = open_store(pg_url)
        try:
            assert wait_until(lambda: store.count() == 9 and store.count("rejected") == 1, 30)
            assert "the database refused it" in store.rejected()[0]["reason"]
        finally:
            store.close()
    finally:
        w.stop()


def test_a_parser_defect_stores_the_message_aside(
    mosquitto: MosquittoBroker,
    publisher: Publisher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import catalogue.writer as writer_module

    def broken(topic: str, payload: bytes, prefix: str) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(writer_module, "parse_message", broken)
    db = tmp_path / "cat.sqlite3"
    w = started(settings(mosquitto, db))
    try:
        publisher.publish(f"{P}/dev-1/classifications", to_bytes(classification("dev-1", 1)))
        assert wait_until(lambda: count(db, "rejected") == 1)
        store = open_store(f"sqlite:///{db}")
        try:
            assert "the parser failed (KeyError" in store.rejected()[0]["reason"]
        finally:
            store.close()
    finally:
        w.stop()
