"""The payload builders: exact fields and values (their schemas: test_wire_contract.py)."""

import hashlib
import inspect
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.errors import UnknownClassError
from edge_agent.payloads import (
    ERROR_REASONS,
    SCHEMA_VERSION,
    ModelRef,
    PayloadError,
    availability_payload,
    classification_payload,
    error_payload,
    iso_utc,
    stats_payload,
    status_payload,
    to_bytes,
    topic,
)
from edge_agent.results import Classification, classify

SHA = "c0ffee" * 10 + "abcd"
MODEL = ModelRef("mobilevit_s", SHA, "fp16")
T_RECV = datetime(2026, 11, 26, 8, 4, 13, 123456, tzinfo=timezone.utc)
T_DONE = 1795680253.5  # Unix seconds are accepted too
PROBS = (0.01, 0.02, 0.6, 0.2, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01)


def _result(probs: tuple[float, ...] = PROBS, class_id: int = 2, k: int = 3) -> Classification:
    ranked = sorted(range(10), key=lambda i: (-probs[i], i))[:k]
    return Classification(
        class_id=class_id,
        label=CLASS_NAMES[class_id],
        confidence=probs[class_id],
        probabilities=tuple(probs),
        top_k=tuple((i, CLASS_NAMES[i], probs[i]) for i in ranked),
        uncertain=False,
    )


def _classification(**kw: object) -> dict:
    args: dict = dict(
        device_id="jetson-01",
        source="inbox",
        frame_ref="/srv/incoming/img_0001.png@1795680253000000000",
        received_at=T_RECV,
        classified_at=T_DONE,
        result=_result(),
        model=MODEL,
        latency_ms={"decode": 1.23456, "preprocess": 0.5, "infer": 4.0},
    )
    args.update(kw)
    return classification_payload(**args)


def test_builders_take_keyword_arguments_only() -> None:
    for builder in (classification_payload, error_payload, stats_payload, status_payload):
        kinds = {p.kind for p in inspect.signature(builder).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, builder.__name__
    with pytest.raises(TypeError):
        classification_payload("jetson-01", "inbox")  # type: ignore[misc]


def test_classification_fields_and_values() -> None:
    p = _classification()
    assert set(p) == {
        "schema_version",
        "type",
        "device_id",
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
        "calibrated",
        "model",
        "latency_ms",
    }
    assert p["calibrated"] is False  # a Classification is uncalibrated unless it says so
    assert p["schema_version"] == SCHEMA_VERSION == 2
    assert p["type"] == "classification" and p["device_id"] == "jetson-01"
    assert p["label"] == "Round Smooth" and p["class_id"] == 2
    assert p["confidence"] == pytest.approx(0.6, abs=1e-6)
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


def test_probabilities_are_a_list_in_class_id_order_on_the_wire() -> None:
    """Version 1 sent a dict by name, which to_bytes's sorted keys put in alphabetical order."""
    p = _classification()
    assert p["probabilities"] == pytest.approx(list(PROBS), abs=1e-6)
    wire = json.loads(to_bytes(p))
    assert isinstance(wire["probabilities"], list)
    assert wire["probabilities"][CLASS_NAMES.index("Barred Spiral")] == pytest.approx(0.04)
    assert wire["probabilities"][wire["class_id"]] == wire["confidence"]


def test_payload_of_a_real_classify_result() -> None:
    logits = np.zeros((1, 10), np.float32)
    logits[0, 5] = 4.0
    (res,) = classify(logits, uncertain_below=0.9, k=4)
    p = _classification(result=res)
    assert p["class_id"] == 5 and p["uncertain"] is True and len(p["top_k"]) == 4
    assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_metadata_is_carried_as_strings() -> None:
    assert "metadata" not in _classification(metadata={})
    assert _classification(metadata={"antenna": "west"})["metadata"] == {"antenna": "west"}


def test_id_is_sha256_of_device_source_frame_model() -> None:
    ref = "/srv/incoming/img_0001.png@1795680253000000000"
    expected = hashlib.sha256(f"jetson-01|inbox|{ref}|{SHA}".encode()).hexdigest()[:32]
    a = _classification()
    b = _classification(classified_at=T_DONE + 60, latency_ms={"infer": 9.0})  # a replay
    assert a["id"] == b["id"] == expected
    assert _classification(frame_ref="x@1")["id"] != a["id"]
    assert _classification(model=ModelRef("m", "0" * 64, "fp16"))["id"] != a["id"]
    assert _classification(device_id="jetson-02")["id"] != a["id"]  # unique across a fleet


def test_top_k_follows_the_result_ranking() -> None:
    p = _classification(result=_result(probs=(0.1,) * 10, class_id=0, k=10))
    assert [t["class_id"] for t in p["top_k"]] == list(range(10))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"latency_ms": {"infer": -1}}, "infer"),
        ({"received_at": datetime(2026, 1, 1)}, "time zone"),
        ({"device_id": "a/b"}, "device_id"),
    ],
)
def test_bad_values_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        _classification(**kw)


def test_bad_results_are_refused() -> None:
    good = _result()
    nine = Classification(2, "Round Smooth", 0.6, PROBS[:9], good.top_k, False)
    with pytest.raises(PayloadError, match="expected 10"):
        _classification(result=nine)
    nan = Classification(2, "Round Smooth", 0.6, (float("nan"), *PROBS[1:]), good.top_k, False)
    with pytest.raises(PayloadError, match="Disturbed"):
        _classification(result=nan)
    with pytest.raises(PayloadError, match="not an integer"):
        _classification(result=Classification(1.5, "x", 0.6, PROBS, good.top_k, False))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="top_k"):
        _classification(result=Classification(2, "Round Smooth", 0.6, PROBS, (), False))
    with pytest.raises(UnknownClassError):
        _classification(result=Classification(10, "x", 0.6, PROBS, good.top_k, False))


def test_iso_utc_converts_zones() -> None:
    cet = timezone(timedelta(hours=1))
    assert iso_utc(datetime(2026, 1, 1, 1, 0, 0, tzinfo=cet)) == "2026-01-01T00:00:00.000Z"
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"


def test_error_payload() -> None:
    p = error_payload(
        device_id="jetson-01",
        source="inbox",
        frame_ref="/in/bad.png@1",
        reason="corrupt",
        detail="not a PNG",
        quarantined_to="/q/bad.png",
        at=0.0,
    )
    assert p == {
        "schema_version": 2,
        "type": "error",
        "device_id": "jetson-01",
        "id": hashlib.sha256(b"jetson-01|inbox|/in/bad.png@1|error|corrupt").hexdigest()[:32],
        "source": "inbox",
        "frame_ref": "/in/bad.png@1",
        "reason": "corrupt",
        "detail": "not a PNG",
        "quarantined_to": "/q/bad.png",
        "at": "1970-01-01T00:00:00.000Z",
    }


def test_error_reasons_are_one_closed_list() -> None:
    assert {"corrupt", "truncated", "oversized", "wrong_type", "unsupported"} <= set(ERROR_REASONS)
    kw = dict(device_id="d", source="s", frame_ref="r", detail="x", quarantined_to=None, at=0.0)
    for reason in ERROR_REASONS:
        assert error_payload(reason=reason, **kw)["reason"] == reason  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="ErrorReason"):
        error_payload(reason="decode", **kw)  # type: ignore[arg-type]


def _stats(**kw: object) -> dict:
    args: dict = dict(
        device_id="jetson-01",
        at=0.0,
        uptime_s=12.34567,
        interval_s=4.0,
        frames=(10, 9, 1),
        interval_frames=(8, 6, 0),
        latency_ms={"infer": {"p50": 3.0, "p99": 9.12345, "max": 9.5}},
        queue_depth=4,
        frames_dropped={"cam0": 2},
        outbox_depth=5,
        outbox_bytes=1234,
        outbox_dropped={"bytes": 0, "age": 3},
        mqtt={"published": 9, "acked": 8, "resent": 0, "rejected": 0, "connects": 1},
    )
    args.update(kw)
    return stats_payload(**args)


def test_stats_payload_rates_are_over_the_interval() -> None:
    p = _stats()
    assert p["type"] == "stats" and p["device_id"] == "jetson-01"
    assert p["frames"] == {"in": 10, "out": 9, "errors": 1}
    assert p["interval_s"] == 4.0 and p["interval_frames"] == {"in": 8, "out": 6, "errors": 0}
    assert p["rates"] == {"fps_in": 2.0, "fps_out": 1.5}  # interval counts / interval_s
    assert p["latency_ms"] == {"infer": {"p50": 3.0, "p99": 9.123, "max": 9.5}}
    assert p["outbox"] == {"depth": 5, "bytes": 1234, "dropped": {"bytes": 0, "age": 3}}
    assert p["uptime_s"] == 12.346
    assert _stats(interval_s=0.0)["rates"] == {"fps_in": 0.0, "fps_out": 0.0}
    with pytest.raises(PayloadError, match="interval_s"):
        _stats(interval_s=float("nan"))


def test_status_payload() -> None:
    model = {"name": "m", "sha256": SHA, "precision": "int8"}
    online = status_payload(
        state="online", device_id="jetson-01", agent_version="0.1.0", model=model, at=0.0
    )
    assert online == {
        "schema_version": 2,
        "type": "status",
        "state": "online",
        "agent_version": "0.1.0",
        "model": model,
        "classes": list(CLASS_NAMES),
        "device_id": "jetson-01",
        "at": "1970-01-01T00:00:00.000Z",
    }
    offline = status_payload(state="offline", device_id="d", agent_version="0.1.0", model=None)
    assert "at" not in offline and offline["model"] is None
    with pytest.raises(PayloadError, match="state"):
        status_payload(state="busy", device_id="d", agent_version="0.1.0", model=None)
    with pytest.raises(PayloadError, match="'at'"):
        status_payload(state="offline", device_id="d", agent_version="0", model=None, at=0.0)
    with pytest.raises(PayloadError, match="'at'"):
        status_payload(state="online", device_id="d", agent_version="0", model=None)


def test_availability_is_plain_text() -> None:
    assert availability_payload("online") == b"online"
    assert availability_payload("offline") == b"offline"
    with pytest.raises(PayloadError):
        availability_payload("Online")


def test_to_bytes_is_compact_sorted_and_round_trips() -> None:
    p = _classification()
    raw = to_bytes(p)
    assert json.loads(raw) == p
    assert b'": ' not in raw and b', "' not in raw  # no padding between tokens
    assert raw == to_bytes(dict(reversed(list(p.items()))))  # key order does not matter
    assert raw.startswith(b'{"calibrated":false,"class_id":2,"classified_at":')
    assert to_bytes({"label": "é"}) == '{"label":"é"}'.encode()  # UTF-8, not \\u escapes
    with pytest.raises(PayloadError):
        to_bytes({"x": float("inf")})


def test_topic() -> None:
    assert (
        topic("galaxy-edge", "jetson-01", "classifications")
        == "galaxy-edge/jetson-01/classifications"
    )
    assert topic("site/a/", "d", "status") == "site/a/d/status"
    assert topic("galaxy-edge", "d", "available") == "galaxy-edge/d/available"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(PayloadError, match="device_id"):
            topic("p", bad, "stats")
    with pytest.raises(PayloadError, match="unknown topic"):
        topic("p", "d", "classification")
    with pytest.raises(PayloadError, match="topic_prefix"):
        topic("p/#", "d", "stats")


def test_a_surrogate_escape_in_a_payload_is_sent_escaped_not_a_crash() -> None:
    """A detail quoting a file name that is not UTF-8 must still become bytes."""
    from edge_agent.payloads import to_bytes

    data = to_bytes({"detail": "latin1-\udce9t\udce9.png: corrupt"})
    assert data == b'{"detail":"latin1-\\udce9t\\udce9.png: corrupt"}'
