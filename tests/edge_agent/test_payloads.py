import hashlib
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.errors import UnknownClassError
from edge_agent.payloads import (
    SCHEMA_VERSION,
    PayloadError,
    classification_payload,
    error_payload,
    iso_utc,
    stats_payload,
    status_payload,
    to_bytes,
    topic,
)

SHA = "c0ffee" * 10 + "abcd"
T_RECV = datetime(2026, 11, 26, 8, 4, 13, 123456, tzinfo=timezone.utc)
T_DONE = 1795680253.5  # Unix seconds are accepted too


def _probs() -> np.ndarray:
    p = np.array([0.01, 0.02, 0.6, 0.2, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01], dtype=np.float32)
    return p


def _classification(**kw: object) -> dict:
    args: dict = dict(
        source="dir:///srv/incoming",
        frame_ref="img_0001.png",
        received_at=T_RECV,
        classified_at=T_DONE,
        class_id=np.int64(2),
        probabilities=_probs(),
        model_name="mobilevit_s",
        model_sha256=SHA,
        precision="fp16",
        latency_ms={"decode": 1.23456, "preprocess": 0.5, "infer": 4.0},
        uncertain=False,
        top_k=3,
    )
    args.update(kw)
    return classification_payload(**args)


def test_classification_has_exactly_the_documented_fields() -> None:
    p = _classification()
    assert set(p) == {
        "schema_version",
        "type",
        "id",
        "source",
        "frame_ref",
        "received_at",
        "classified_at",
        "label",
        "class_id",
        "confidence",
        "probabilities",
        "top_k",
        "uncertain",
        "model",
        "latency_ms",
    }
    assert p["schema_version"] == SCHEMA_VERSION == 1
    assert p["type"] == "classification"
    assert p["label"] == "Round Smooth" and p["class_id"] == 2
    assert p["confidence"] == pytest.approx(0.6, abs=1e-6)
    assert list(p["probabilities"]) == list(CLASS_NAMES)  # all ten, official order
    assert p["probabilities"]["In-between Round Smooth"] == pytest.approx(0.2, abs=1e-6)
    assert [t["label"] for t in p["top_k"]] == [
        "Round Smooth",
        "In-between Round Smooth",
        "Cigar Shaped Smooth",
    ]
    assert p["top_k"][0] == {"label": "Round Smooth", "class_id": 2, "probability": p["confidence"]}
    assert p["received_at"] == "2026-11-26T08:04:13.123Z"
    assert p["classified_at"] == iso_utc(T_DONE)
    assert p["model"] == {"name": "mobilevit_s", "sha256": SHA, "precision": "fp16"}
    assert p["latency_ms"] == {"decode": 1.235, "preprocess": 0.5, "infer": 4.0}
    assert p["uncertain"] is False


def test_stable_id_is_sha256_of_source_frame_model() -> None:
    expected = hashlib.sha256(f"dir:///srv/incoming|img_0001.png|{SHA}".encode()).hexdigest()[:32]
    a = _classification()
    b = _classification(classified_at=T_DONE + 60, latency_ms={"infer": 9.0})  # a replay
    assert a["id"] == b["id"] == expected
    assert _classification(frame_ref="img_0002.png")["id"] != a["id"]
    assert _classification(model_sha256="0" * 64)["id"] != a["id"]


def test_ties_in_top_k_are_broken_by_class_id() -> None:
    p = _classification(probabilities=[0.1] * 10, class_id=0, top_k=10)
    assert [t["class_id"] for t in p["top_k"]] == list(range(10))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"probabilities": [0.1] * 9}, "expected 10"),
        ({"probabilities": [float("nan")] + [0.1] * 9}, "Disturbed"),
        ({"class_id": 1.5}, "not an integer"),
        ({"top_k": 0}, "top_k"),
        ({"latency_ms": {"infer": -1}}, "infer"),
        ({"received_at": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_bad_values_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        _classification(**kw)


def test_unknown_class_id() -> None:
    with pytest.raises(UnknownClassError):
        _classification(class_id=10)


def test_iso_utc_converts_zones() -> None:
    cet = timezone(timedelta(hours=1))
    assert iso_utc(datetime(2026, 1, 1, 1, 0, 0, tzinfo=cet)) == "2026-01-01T00:00:00.000Z"
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"


def test_error_payload() -> None:
    p = error_payload("dir:///in", "bad.png", "corrupt", "not a PNG", "/q/bad.png", at=0.0)
    assert p == {
        "schema_version": 1,
        "type": "error",
        "id": hashlib.sha256(b"dir:///in|bad.png|error|corrupt").hexdigest()[:32],
        "source": "dir:///in",
        "frame_ref": "bad.png",
        "reason": "corrupt",
        "detail": "not a PNG",
        "quarantined_to": "/q/bad.png",
        "at": "1970-01-01T00:00:00.000Z",
    }
    assert error_payload("csi://0", "42", "decode", "x", None)["quarantined_to"] is None


def test_stats_payload() -> None:
    p = stats_payload(
        at=0.0,
        uptime_s=12.34567,
        frames_in=10,
        frames_out=9,
        errors=1,
        fps_in=2.0,
        fps_out=1.8,
        latency_ms={"infer": {"p50": 3.0, "p99": 9.12345}},
        queue_depth=4,
        frames_dropped={"cam0": 2},
        outbox_depth=5,
        outbox_bytes=1234,
        outbox_dropped={"bytes": 0, "age": 3},
        mqtt={"published": 9, "acked": 8},
    )
    assert p["frames"] == {"in": 10, "out": 9, "errors": 1}
    assert p["latency_ms"] == {"infer": {"p50": 3.0, "p99": 9.123}}
    assert p["outbox"] == {"depth": 5, "bytes": 1234, "dropped": {"bytes": 0, "age": 3}}
    assert p["uptime_s"] == 12.346 and p["type"] == "stats"


def test_status_payload() -> None:
    model = {"name": "m", "sha256": SHA, "precision": "int8"}
    online = status_payload("online", model, "0.1.0", "jetson-01", at=0.0)
    assert online == {
        "schema_version": 1,
        "type": "status",
        "state": "online",
        "agent_version": "0.1.0",
        "model": model,
        "device_id": "jetson-01",
        "at": "1970-01-01T00:00:00.000Z",
    }
    assert "at" not in status_payload("offline", None, "0.1.0")
    with pytest.raises(PayloadError, match="state"):
        status_payload("busy", None, "0.1.0")


def test_to_bytes_is_compact_sorted_and_round_trips() -> None:
    p = _classification()
    raw = to_bytes(p)
    assert json.loads(raw) == p
    assert b'": ' not in raw and b', "' not in raw  # no padding between tokens
    assert raw == to_bytes(dict(reversed(list(p.items()))))  # key order does not matter
    assert raw.startswith(b'{"class_id":2,"classified_at":')
    assert to_bytes({"label": "é"}) == '{"label":"é"}'.encode()  # UTF-8, not \\u escapes
    with pytest.raises(PayloadError):
        to_bytes({"x": float("inf")})


def test_topic() -> None:
    assert (
        topic("galaxy-edge", "jetson-01", "classifications")
        == "galaxy-edge/jetson-01/classifications"
    )
    assert topic("site/a/", "d", "status") == "site/a/d/status"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(PayloadError, match="device_id"):
            topic("p", bad, "stats")
    with pytest.raises(PayloadError, match="unknown topic"):
        topic("p", "d", "classification")
    with pytest.raises(PayloadError, match="topic_prefix"):
        topic("p/#", "d", "stats")
