"""Topic + bytes -> record, or a rejection with a reason that says what is wrong."""

from __future__ import annotations

import json

import pytest
from catalogue_testkit import classification, error, stats, status, tiny_jpeg, to_bytes

from catalogue.errors import RejectedMessage
from catalogue.messages import (
    Classification,
    DeviceStats,
    DeviceStatus,
    ErrorReport,
    OtherMessage,
    Thumbnail,
    parse_message,
)
from catalogue.schemas import known_payload_types
from edge_agent.contract.classes import CLASS_NAMES

P = "galaxy-edge"


def test_the_agents_schemas_are_loaded() -> None:
    kinds = {k for k, _ in known_payload_types()}
    assert {"classification", "error", "status", "stats"} <= kinds


def test_a_v2_classification_becomes_a_row() -> None:
    body = classification("dev-1", 5, confidence=0.9)
    rec = parse_message(f"{P}/dev-1/classifications", to_bytes(body), P)
    assert isinstance(rec, Classification)
    assert (rec.device, rec.id, rec.class_id, rec.label) == ("dev-1", body["id"], 5, CLASS_NAMES[5])
    assert rec.probabilities is not None and rec.probabilities[5] == pytest.approx(0.9)
    assert rec.ra is None and rec.dec is None
    assert rec.classified_at.tzinfo is not None


def test_a_cut_out_keeps_its_sky_and_pixel_position() -> None:
    body = classification("dev-1", 1, sky={"ra": 150.1, "dec": 2.2}, pixel={"x": 10.5, "y": 20})
    rec = parse_message(f"{P}/dev-1/classifications", to_bytes(body), P)
    assert isinstance(rec, Classification)
    assert (rec.ra, rec.dec, rec.x, rec.y) == (150.1, 2.2, 10.5, 20.0)


def test_version_1_probabilities_by_name_are_read_in_class_id_order() -> None:
    body = classification("dev-1", 3)
    body["schema_version"] = 1
    body["probabilities"] = {CLASS_NAMES[i]: p for i, p in enumerate(body["probabilities"])}
    del body["device_id"]
    rec = parse_message(f"{P}/dev-1/classifications", to_bytes(body), P)
    assert isinstance(rec, Classification)
    assert rec.probabilities == tuple(classification("dev-1", 3)["probabilities"])


def test_errors_status_stats_availability_thumbnails_and_other_kinds() -> None:
    assert isinstance(parse_message(f"{P}/d/errors", to_bytes(error("d", 1)), P), ErrorReport)
    st = parse_message(f"{P}/d/status", to_bytes(status("d", "offline")), P)
    assert isinstance(st, DeviceStatus) and st.state == "offline"
    av = parse_message(f"{P}/d/available", b"online", P)
    assert isinstance(av, DeviceStatus) and av.state == "online"
    assert isinstance(parse_message(f"{P}/d/stats", to_bytes(stats("d")), P), DeviceStats)
    jpeg = tiny_jpeg()
    th = parse_message(f"{P}/d/thumbnails/{'a' * 32}", jpeg, P)
    assert isinstance(th, Thumbnail) and th.jpeg == jpeg and th.id == "a" * 32
    other = parse_message(f"{P}/d/frame_summaries", to_bytes({"schema_version": 2, "id": "f1"}), P)
    assert isinstance(other, OtherMessage) and other.kind == "frame_summaries"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"{P}/d/classifications", b"\xff\xfe not json", "not UTF-8 JSON"),
        (f"{P}/d/classifications", b"[1, 2]", "expected an object"),
        (f"{P}/d/classifications", b'{"schema_version": 99}', "unknown schema_version 99"),
        (f"{P}/d/classifications", b'{"type": "classification"}', "unknown schema_version None"),
        ("other/d/classifications", b"{}", "not under the prefix"),
        (f"{P}/d/classifications/x/y", b"{}", "not <prefix>/<device>/<kind>"),
        (f"{P}/d/thumbnails/{'a' * 32}", b"GIF89a", "not a JPEG"),
        (f"{P}/d/thumbnails", b"\xff\xd8", "needs the classification id"),
        (f"{P}/d/available", b"maybe", "availability must be"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    with pytest.raises(RejectedMessage, match=reason):
        parse_message(topic, payload, P)


def test_schema_violations_name_the_field() -> None:
    body = classification("d", 1)
    body["confidence"] = 1.5
    with pytest.raises(RejectedMessage, match="schema: confidence"):
        parse_message(f"{P}/d/classifications", to_bytes(body), P)
    body = classification("d", 1)
    del body["label"]
    with pytest.raises(RejectedMessage, match="'label' is a required property"):
        parse_message(f"{P}/d/classifications", to_bytes(body), P)


def test_a_payload_for_another_device_or_kind_is_rejected() -> None:
    body = to_bytes(classification("dev-2", 1))
    with pytest.raises(RejectedMessage, match="device_id 'dev-2' in the payload"):
        parse_message(f"{P}/dev-1/classifications", body, P)
    with pytest.raises(RejectedMessage, match="a errors topic carries type 'classification'"):
        parse_message(f"{P}/dev-2/errors", body, P)


def test_a_label_that_does_not_match_its_class_id_is_rejected() -> None:
    body = classification("d", 1)
    body["schema_version"] = 1  # no v1 schema: the parser's own checks apply
    body["label"] = CLASS_NAMES[2]
    with pytest.raises(RejectedMessage, match="is not the name of class_id 1"):
        parse_message(f"{P}/d/classifications", json.dumps(body).encode(), P)


def test_compiled_validation_only_where_it_checks_every_keyword() -> None:
    from catalogue.schemas import _index

    checkers = _index()
    assert checkers[("classification", 2)].fast is not None  # the hot path: compiled
    assert checkers[("status", 2)].fast is None  # prefixItems: the reference validator only
    bad = classification("d", 1)
    bad["top_k"] = []
    checker = checkers[("classification", 2)]
    assert "top_k" in str(checker.first_error(bad).absolute_path[0])  # worded by jsonschema


def test_a_wide_field_cut_out_position_as_the_fields_module_writes_it() -> None:
    where = {"index": 3, "x": 812.25, "y": 90.5, "size_px": 64, "r50_px": 4.1, "ra": 210.8023461,
             "dec": 54.3487122, "sky": "wcs", "approximate": False}  # fmt: skip
    rec = parse_message(f"{P}/d/classifications", to_bytes(classification("d", 1, cutout=where)), P)
    assert isinstance(rec, Classification)
    assert (rec.ra, rec.dec, rec.x, rec.y) == (210.8023461, 54.3487122, 812.25, 90.5)
    no_wcs = {**where, "ra": None, "dec": None, "sky": "none"}
    rec = parse_message(
        f"{P}/d/classifications", to_bytes(classification("d", 1, cutout=no_wcs)), P
    )
    assert isinstance(rec, Classification) and rec.ra is None and rec.x == 812.25


def test_a_wide_field_summary_is_checked_and_kept_whole() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "mqtt.md").read_text()
    section = doc.split("<!-- schema: frame_summary -->", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    topic = f"{P}/{example['device_id']}/summaries"
    rec = parse_message(topic, to_bytes(example), P)
    assert isinstance(rec, OtherMessage) and rec.kind == "summaries" and rec.id == example["id"]
    with pytest.raises(RejectedMessage, match="schema: galaxies_kept"):
        parse_message(topic, to_bytes({**example, "galaxies_kept": -1}), P)
