"""The same catalogue semantics on SQLite and on a real PostgreSQL (q3c cone searches)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from catalogue_testkit import classification, error, stats, status, tiny_jpeg, to_bytes

from catalogue.errors import QueryError
from catalogue.messages import parse_message
from catalogue.store import Cone, Query, Rejected, Store
from edge_agent.contract.classes import CLASS_NAMES

P = "galaxy-edge"


def cls(device: str, n: int, **kw: object) -> object:
    return parse_message(
        f"{P}/{device}/classifications", to_bytes(classification(device, n, **kw)), P
    )


def test_a_replayed_result_is_stored_once(store: Store) -> None:
    first = store.write([cls("a", n) for n in range(10)])
    again = store.write([cls("a", n) for n in range(5, 15)])  # 5 replays, 5 new
    assert (first.stored, first.duplicates) == (10, 0)
    assert (again.stored, again.duplicates) == (5, 5)
    assert store.count() == 15
    store.write([cls("b", 0)])  # the same id from another device is another row
    assert store.count() == 16


def test_query_by_label_device_time_and_confidence(store: Store) -> None:
    store.write([cls("a", n, confidence=0.3 + 0.05 * n) for n in range(12)])
    store.write([cls("b", n) for n in range(3)])
    assert {r["label"] for r in store.query(Query(label=CLASS_NAMES[2]))} == {CLASS_NAMES[2]}
    assert len(store.query(Query(label=CLASS_NAMES[2]))) == 2  # a/2 and b/2
    assert {r["device"] for r in store.query(Query(device="b"))} == {"b"}
    t0 = datetime.fromtimestamp(1_780_000_000 + 5, timezone.utc)
    t1 = datetime.fromtimestamp(1_780_000_000 + 8, timezone.utc)
    rows = store.query(Query(device="a", since=t0, until=t1))
    assert [r["frame_ref"] for r in rows] == [
        "frame-00005.png",
        "frame-00006.png",
        "frame-00007.png",
    ]
    assert all(r["confidence"] >= 0.7 for r in store.query(Query(min_confidence=0.7)))
    assert len(store.query(Query(device="a", min_confidence=0.69))) == 4  # 0.7 .. 0.85
    newest = store.query(Query(limit=1, newest_first=True))[0]
    assert newest["frame_ref"] == "frame-00011.png"
    assert newest["probabilities"] is not None and len(newest["probabilities"]) == 10


def test_cone_search_is_exact_across_ra_zero(store: Store) -> None:
    positions = {0: (359.95, 10.0), 1: (0.05, 10.0), 2: (0.0, 10.3), 3: (180.0, -45.0), 4: None}
    recs = []
    for n, pos in positions.items():
        extra = {"sky": {"ra": pos[0], "dec": pos[1]}} if pos else {}
        recs.append(cls("a", n, **extra))
    store.write(recs)
    near = {r["frame_ref"] for r in store.query(Query(cone=Cone(0.0, 10.0, 0.1)))}
    assert near == {"frame-00000.png", "frame-00001.png"}  # 0.049 deg each side of RA 0
    wider = store.query(Query(cone=Cone(0.0, 10.0, 0.31)))
    assert len(wider) == 3
    south = store.query(Query(cone=Cone(180.0, -45.0, 1.0 / 3600)))
    assert [r["ra"] for r in south] == [180.0]


def test_cone_arguments_are_checked() -> None:
    with pytest.raises(QueryError, match="radius"):
        Cone(10.0, 10.0, 0.0)
    with pytest.raises(QueryError, match="out of range"):
        Cone(400.0, 10.0, 1.0)


def test_devices_thumbnails_errors_and_rejected_feed_the_page(store: Store) -> None:
    jpeg = tiny_jpeg()
    c = classification("a", 1)
    store.write(
        [
            parse_message(f"{P}/a/status", to_bytes(status("a")), P),
            parse_message(f"{P}/a/stats", to_bytes(stats("a", fps=4.5, outbox_depth=7)), P),
            parse_message(f"{P}/a/classifications", to_bytes(c), P),
            parse_message(f"{P}/a/thumbnails/{c['id']}", jpeg, P),
            parse_message(f"{P}/a/errors", to_bytes(error("a", 1)), P),
            parse_message(f"{P}/b/available", b"offline", P),
        ],
        [Rejected(f"{P}/a/classifications", b"\x00garbage", "not UTF-8 JSON")],
    )
    state = store.page_state()
    devices = {d["device"]: d for d in state.devices}
    assert devices["a"]["state"] == "online" and devices["b"]["state"] == "offline"
    assert (devices["a"]["fps"], devices["a"]["outbox_depth"]) == (4.5, 7)
    assert devices["a"]["model"]["name"] == "mobilevit_s"
    assert state.latest[0]["has_thumbnail"] and store.thumbnail("a", c["id"]) == jpeg
    assert state.histogram == [{"class_id": 1, "label": CLASS_NAMES[1], "count": 1}]
    assert state.errors[0]["reason"] == "corrupt"
    assert state.totals == {"classifications": 1, "errors": 1, "rejected": 1}
    assert store.rejected()[0]["payload"] == b"\x00garbage"
    # a later offline status keeps what the birth said about the model
    store.write([parse_message(f"{P}/a/status", to_bytes(status("a", "offline")), P)])
    devices = {d["device"]: d for d in store.page_state().devices}
    assert devices["a"]["state"] == "offline" and devices["a"]["model"] is not None


def test_postgres_uses_the_q3c_index(pg_url: str) -> None:
    from catalogue.store import open_store

    store = open_store(pg_url)
    try:
        assert getattr(store, "q3c", False), "q3c should be installed (scripts/setup)"
        store.write([cls("a", n, sky={"ra": 10.0 + n * 0.01, "dec": 20.0}) for n in range(50)])
        plan = store._fetch(  # the planner may pick it on a small table only if it is there
            "SELECT indexname FROM pg_indexes WHERE tablename = 'classifications'"
        )
        assert ("classifications_q3c",) in plan
        assert len(store.query(Query(cone=Cone(10.0, 20.0, 0.0451)))) == 5
    finally:
        store.close()


def test_a_plain_availability_keeps_what_the_json_status_said(store: Store) -> None:
    birth = parse_message(f"{P}/a/status", to_bytes(status("a")), P)
    plain = parse_message(f"{P}/a/available", b"online", P)
    store.write([birth, plain])  # the agent sends both at every connect, often in one batch
    store.write([parse_message(f"{P}/a/available", b"offline", P)])
    (device,) = store.page_state().devices
    assert device["state"] == "offline"
    assert device["model"]["name"] == "mobilevit_s" and device["agent_version"] == "0.1.0"
