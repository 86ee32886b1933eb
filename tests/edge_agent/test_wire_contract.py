"""docs/mqtt.md, the JSON Schemas in edge_agent/schemas and the wire agree.

Three layers. The schemas against the code (kinds, topics, class names, error reasons). The
docs against the schemas (every schema linked, every field table naming exactly the schema's
fields, every example valid). The wire against the schemas: payloads captured from a real
Mosquitto, sent by a real agent (birth, availability, classifications, errors, stats, the clean
stop, and the last wills of a SIGKILLed agent), validated with every object closed
(``closed_schema``) so that a field sent without a schema entry fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from agent_testkit import (
    RunningAgent,
    agent_config,
    drop_file,
    expected_probabilities,
    galaxy_like,
    write_config,
)
from jsonschema import Draft202012Validator
from mqtt_broker import Collector, MosquittoBroker, Received

from edge_agent import pipeline
from edge_agent.contract import decode
from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.manifest import sha256_file
from edge_agent.payloads import (
    ERROR_REASONS,
    PAYLOAD_TOPICS,
    SCHEMA_VERSION,
    TOPIC_NAMES,
    ModelRef,
    availability_payload,
    classification_payload,
    error_payload,
    stats_payload,
    status_payload,
    to_bytes,
)
from edge_agent.results import classify
from edge_agent.schemas import SCHEMA_FILES, closed_schema, load_schema, schema_kinds
from edge_agent.sources.file_input import NotRegularFileError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "mqtt.md"
EDGE_AGENT = ROOT / "edge_agent"
T = "galaxy-edge/dev1/"
JSON_KINDS = tuple(k for k in SCHEMA_FILES if k != "availability")


# --- helpers ---------------------------------------------------------------------------------


def validator(kind: str) -> Draft202012Validator:
    """The closed schema of ``kind``, with format checking (date-time is really checked)."""
    return Draft202012Validator(
        closed_schema(load_schema(kind)), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def problems(kind: str, instance: object) -> list[str]:
    errors = validator(kind).iter_errors(instance)
    return sorted(f"{kind} {list(e.absolute_path)}: {e.message}" for e in errors)


def assert_valid(kind: str, instance: object) -> None:
    found = problems(kind, instance)
    assert not found, "\n".join(found)


def schema_paths(schema: dict[str, Any]) -> set[str]:
    """Every named field of a schema as a path: ``a``, ``a.b``, ``a[].b``, ``a.<*>.b``."""
    out: set[str] = set()

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), f"schemas are self-contained, found $ref {ref}"
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
        return node

    def walk(node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        for branch in node.get("oneOf", []) + node.get("anyOf", []):
            walk(branch, path)
        for name, sub in node.get("properties", {}).items():
            child = f"{path}.{name}" if path else name
            out.add(child)
            walk(sub, child)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.<*>")

    walk(schema, "")
    return out


def docs_text() -> str:
    return DOCS.read_text(encoding="utf-8")


def doc_section(kind: str) -> str:
    """From the ``<!-- schema: kind -->`` marker to the heading after its own."""
    text = docs_text()
    marker = f"<!-- schema: {kind} -->"
    assert text.count(marker) == 1, f"docs/mqtt.md needs exactly one {marker}"
    lines = text.split(marker, 1)[1].splitlines()
    out, headings = [], 0
    for line in lines:
        if line.startswith("<!-- schema:"):
            break
        if line.startswith("## "):
            headings += 1
            if headings == 2:
                break
        out.append(line)
    return "\n".join(out)


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (header first, separator dropped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def documented_fields(kind: str) -> set[str]:
    fields: set[str] = set()
    for table in tables(doc_section(kind)):
        if table[0][0] == "field":
            for row in table[1:]:
                fields |= {re.sub(r"<[^>]+>", "<*>", t) for t in re.findall(r"`([^`]+)`", row[0])}
    return fields


def json_examples(kind: str) -> list[Any]:
    return [
        json.loads(block) for block in re.findall(r"```json\n(.*?)```", doc_section(kind), re.S)
    ]


# --- the schemas and the code ----------------------------------------------------------------


def test_every_payload_kind_has_a_valid_schema_and_a_topic() -> None:
    assert set(schema_kinds()) == set(PAYLOAD_TOPICS)
    ids = set()
    for kind in schema_kinds():
        schema = load_schema(kind)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        ids.add(schema["$id"])
        assert schema["$id"].endswith(f":{kind}:{SCHEMA_VERSION}")
        if kind in JSON_KINDS:
            assert schema["properties"]["type"] == {"const": kind}
            assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
            assert {"schema_version", "type", "device_id"} <= set(schema["required"])
    assert len(ids) == len(SCHEMA_FILES)
    assert load_schema("availability")["enum"] == ["online", "offline"]


def test_schema_constants_are_the_codes() -> None:
    classification = load_schema("classification")
    assert classification["$defs"]["label"]["enum"] == list(CLASS_NAMES)
    status = load_schema("status")
    assert [c["const"] for c in status["properties"]["classes"]["prefixItems"]] == list(CLASS_NAMES)
    assert load_schema("error")["properties"]["reason"]["enum"] == list(ERROR_REASONS)


def test_shared_definitions_are_identical_in_every_schema() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for kind in schema_kinds():
        for name, definition in load_schema(kind).get("$defs", {}).items():
            first = seen.setdefault(name, (kind, definition))
            assert definition == first[1], f"$defs/{name} differs in {kind} and {first[0]}"


def test_every_reason_the_code_can_emit_is_in_the_one_list() -> None:
    emitted = {
        *typing.get_args(decode.Reason),
        NotRegularFileError.reason,
        pipeline.POISON,
        pipeline.DECODE_FAILED,
    }
    # Reasons written as literals at a reject() call, anywhere in the agent.
    for path in EDGE_AGENT.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        emitted |= set(re.findall(r"reject\(\s*\w+,\s*\"(\w+)\"", source))
        emitted |= set(re.findall(r"DecodeError\(\s*\"(\w+)\"", source))
    assert emitted <= set(ERROR_REASONS), f"not in ERROR_REASONS: {emitted - set(ERROR_REASONS)}"


def test_the_schemas_check_formats_and_refuse_version_1_and_unknown_fields() -> None:
    result = classify(np.eye(10)[[5]] * 4.0, uncertain_below=0.5, k=3)[0]
    good = classification_payload(
        device_id="d1",
        source="inbox",
        frame_ref="/in/a.png@1",
        received_at=0.0,
        classified_at=0.5,
        result=result,
        model=ModelRef("m", "a" * 64, "fp32"),
        latency_ms={"total": 1.0},
    )
    assert_valid("classification", good)
    v1 = {**good, "probabilities": dict(zip(CLASS_NAMES, good["probabilities"], strict=True))}
    assert problems("classification", {**v1, "schema_version": 1})
    assert problems("classification", {**good, "extra": 1})  # closed in the tests
    assert not list(
        Draft202012Validator(load_schema("classification")).iter_errors({**good, "extra": 1})
    )  # the published schema lets consumers ignore new fields
    # Matches the pattern, but is no date: only the format checker catches it.
    assert problems("classification", {**good, "received_at": "2026-13-45T08:00:00.000Z"})


def test_what_the_builders_make_is_valid() -> None:
    model = {"name": "m", "sha256": "b" * 64, "precision": "int8", "backend": "onnxruntime"}
    assert_valid(
        "status",
        status_payload(state="online", device_id="d1", agent_version="0.1", model=model, at=0.0),
    )
    for m in (model, None):
        assert_valid(
            "status", status_payload(state="offline", device_id="d1", agent_version="0", model=m)
        )
    for reason in ERROR_REASONS:
        body = error_payload(
            device_id="d1",
            source="receiver",
            frame_ref="sha256:00",
            reason=reason,
            detail="x",
            quarantined_to=None,
            at=1.0,
        )
        assert_valid("error", body)
    stats = stats_payload(
        device_id="d1",
        at=0.0,
        uptime_s=1.0,
        interval_s=0.0,
        frames=(0, 0, 0),
        interval_frames=(0, 0, 0),
        latency_ms={},
        queue_depth=0,
        frames_dropped={},
        outbox_depth=0,
        outbox_bytes=0,
        outbox_dropped={"bytes": 0, "age": 0},
        mqtt={"published": 0, "acked": 0, "resent": 0, "rejected": 0, "connects": 0},
    )
    assert_valid("stats", stats)
    for state in ("online", "offline"):
        assert_valid("availability", availability_payload(state).decode("utf-8"))


# --- the docs and the schemas ----------------------------------------------------------------


def test_docs_state_the_version_and_link_every_schema() -> None:
    text = docs_text()
    assert f"Payload schema version **{SCHEMA_VERSION}**" in text
    for kind, name in SCHEMA_FILES.items():
        link = f"](../edge_agent/schemas/{name})"
        assert link in doc_section(kind), f"the {kind} section must link its schema"
        assert (DOCS.parent / f"../edge_agent/schemas/{name}").resolve().is_file()


def test_docs_list_every_topic() -> None:
    text = docs_text()
    for name in TOPIC_NAMES:
        assert f"`<prefix>/<device_id>/{name}" in text, f"docs/mqtt.md: topic {name} missing"


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_docs_field_table_names_exactly_the_schema_fields(kind: str) -> None:
    documented = documented_fields(kind)
    in_schema = schema_paths(load_schema(kind))
    assert documented - in_schema == set(), f"documented, not in the {kind} schema"
    assert in_schema - documented == set(), f"in the {kind} schema, not documented"


def test_docs_list_exactly_the_error_reasons() -> None:
    text = docs_text()
    assert text.count("<!-- reasons -->") == 1
    (table, *_) = tables(text.split("<!-- reasons -->", 1)[1])
    listed = [re.findall(r"`([^`]+)`", row[0])[0] for row in table[1:]]
    assert listed == list(ERROR_REASONS)


@pytest.mark.parametrize("kind", JSON_KINDS)
def test_docs_examples_are_valid_payloads(kind: str) -> None:
    examples = json_examples(kind)
    assert examples, f"the {kind} section needs a JSON example"
    for example in examples:
        assert_valid(kind, example)


def test_docs_examples_follow_the_documented_ids_and_references() -> None:
    """Version 1's docs showed a URI as ``source`` and a bare file name as ``frame_ref``."""
    (c,) = json_examples("classification")
    parts = (c["device_id"], c["source"], c["frame_ref"], c["model"]["sha256"])
    assert c["id"] == hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
    (e,) = json_examples("error")
    parts = (e["device_id"], e["source"], e["frame_ref"], "error", e["reason"])
    assert e["id"] == hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
    for body in (c, e):
        assert "://" not in body["source"]  # a name, not a URI
        assert re.fullmatch(r"/.+@\d+", body["frame_ref"])  # full path @ mtime_ns, as sent
    assert c["probabilities"][c["class_id"]] == c["confidence"]


# --- the wire --------------------------------------------------------------------------------


def _bodies(c: Collector, name: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in c.on(T + name)]


def _all_valid(c: Collector) -> dict[str, list[Received]]:
    """Validate every message the collector holds; returns them by topic name."""
    by_topic: dict[str, list[Received]] = {}
    kinds = {topic: kind for kind, topic in PAYLOAD_TOPICS.items()}
    for m in c.messages:
        name = m.topic.split("/")[2]  # galaxy-edge/<device>/<name>[/...]
        by_topic.setdefault(name, []).append(m)
        assert name in TOPIC_NAMES, f"{m.topic}: not a topic of docs/mqtt.md"
        if name not in kinds:
            continue  # binary: frames in, JPEG thumbnails out
        kind = kinds[name]
        if kind == "availability":
            assert_valid(kind, m.payload.decode("utf-8"))
        else:
            body = json.loads(m.payload)
            assert body["type"] == kind and body["device_id"] == "dev1"
            assert_valid(kind, body)
    return by_topic


@pytest.mark.mqtt
def test_real_payloads_of_a_running_agent_match_their_schemas(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    raw = agent_config(tmp_path, tiny_bundle, mosquitto, stats_interval_s=0.3)
    raw["sources"].append({"uri": "mqtt://", "name": "receiver"})  # the mqtt section's broker
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    images = {f"g{i}.png": galaxy_like(i, 50, 60) for i in range(3)}
    collector = Collector(mosquitto, "galaxy-edge/#")
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    mtimes: dict[str, int] = {}
    try:
        with RunningAgent(cfg) as agent:
            assert agent.sources["receiver"][1].connected.wait(5)
            time.sleep(0.2)  # the receiver's SUBACK
            for name, rgb in images.items():
                _ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
                mtimes[name] = drop_file(inbox, name, png.tobytes()).stat().st_mtime_ns
            drop_file(inbox, "cut.png", png.tobytes()[:-40])
            drop_file(inbox, "text.png", b"not an image\n")
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("frame_ref", "rx-7"), ("antenna", "west")]
            sender.publish(T + "frames", png.tobytes(), qos=1, properties=props).wait_for_publish(5)
            sender.publish(T + "frames", b"garbage", qos=1).wait_for_publish(5)

            def settled(_: object) -> bool:
                # All results in, then a report of an interval in which nothing happened: its
                # rates are 0 though frames were classified 0.3 s before (version 1's 60-s
                # window still showed them).
                done = len(_bodies(collector, "classifications")) >= 4
                quiet = [
                    s
                    for s in _bodies(collector, "stats")
                    if s["frames"]["out"] == 4 and s["interval_frames"]["out"] == 0
                ]
                return done and len(_bodies(collector, "errors")) >= 3 and len(quiet) >= 1

            assert collector.wait_for(settled, 20), [m.topic for m in collector.messages]
        assert collector.wait_for(lambda ms: ms[-1].topic.endswith("/available"), 10)
    finally:
        sender.loop_stop()
        collector.close()

    by_topic = _all_valid(collector)
    assert set(by_topic) >= {"status", "available", "classifications", "errors", "stats"}

    # status: birth then the clean stop's offline, both retained; the class list by id.
    status = [json.loads(m.payload) for m in by_topic["status"]]
    assert [s["state"] for s in status] == ["online", "offline"]
    assert status[0]["classes"] == list(CLASS_NAMES) and "at" not in status[1]
    # available: the same moments, plain text.
    assert [m.payload for m in by_topic["available"]] == [b"online", b"offline"]

    # classifications: source is the name, frame_ref the full path @ mtime_ns, probabilities
    # a list in class-id order.
    model_sha = sha256_file(tiny_bundle / "model.onnx")
    got = {b["frame_ref"]: b for b in _bodies(collector, "classifications")}
    for name, rgb in images.items():
        ref = f"{inbox / name}@{mtimes[name]}"
        body = got[ref]
        assert body["source"] == "inbox"
        np.testing.assert_allclose(
            body["probabilities"], expected_probabilities(rgb, tiny_bundle), atol=2e-6
        )
        key = f"dev1|inbox|{ref}|{model_sha}"
        assert body["id"] == hashlib.sha256(key.encode()).hexdigest()[:32]
    assert got["rx-7"]["source"] == "receiver" and got["rx-7"]["metadata"] == {"antenna": "west"}

    # errors: the reasons the docs list, and where the input went.
    errors = {(b["source"], b["frame_ref"].split("@")[0]): b for b in _bodies(collector, "errors")}
    assert errors[("inbox", str(inbox / "cut.png"))]["reason"] == "truncated"
    assert errors[("inbox", str(inbox / "text.png"))]["reason"] == "wrong_type"
    (from_receiver,) = [b for (src, _), b in errors.items() if src == "receiver"]
    assert from_receiver["reason"] == "wrong_type"
    assert Path(from_receiver["quarantined_to"]).read_bytes() == b"garbage"

    # stats: per interval; the intervals are consecutive and add up to the totals.
    stats = _bodies(collector, "stats")
    assert all(s["interval_s"] > 0 for s in stats)
    assert all(s["interval_s"] < min(10.0, s["uptime_s"]) for s in stats[1:])  # not since start
    busy = [s for s in stats if s["interval_frames"]["out"] > 0]
    assert busy and all(set(s["latency_ms"]["total"]) == {"p50", "p99", "max"} for s in busy)
    for s in busy:
        expected = s["interval_frames"]["out"] / s["interval_s"]
        assert s["rates"]["fps_out"] == pytest.approx(expected, rel=0.01, abs=0.01)
    assert sum(s["interval_frames"]["out"] for s in stats) <= stats[-1]["frames"]["out"] == 4


def _spawn(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.mqtt
def test_last_wills_of_a_killed_agent_match_their_schemas(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    collector = Collector(mosquitto, "galaxy-edge/+/+")
    proc = _spawn(cfg)

    def states(_: object) -> tuple[list[str], list[bytes]]:
        return (
            [b["state"] for b in _bodies(collector, "status")],
            [m.payload for m in collector.on(T + "available")],
        )

    try:
        assert collector.wait_for(lambda _: states(_) == (["online"], [b"online"]), 30)
        os.kill(proc.pid, signal.SIGKILL)  # no DISCONNECT on either connection
        proc.wait(10)
        assert collector.wait_for(
            lambda _: states(_) == (["online", "offline"], [b"online", b"offline"]), 20
        ), mosquitto.log_tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.close()
    _all_valid(collector)
    will = _bodies(collector, "status")[-1]
    assert "at" not in will and will["model"]["sha256"] == sha256_file(tiny_bundle / "model.onnx")

    late = Collector(mosquitto, "galaxy-edge/+/+")  # what a subscriber arriving now learns
    try:
        assert late.wait_for(lambda ms: len(ms) >= 2, 10)
        retained = {m.topic: m for m in late.messages}
        assert all(m.retain for m in retained.values())
        assert retained[T + "available"].payload == b"offline"
        assert json.loads(retained[T + "status"].payload) == will
        assert to_bytes(will) == retained[T + "status"].payload
    finally:
        late.close()


@pytest.mark.mqtt
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_availability_comes_back_after_a_broker_restart(
    tmp_path: Path, mosquitto: MosquittoBroker, protocol: str
) -> None:
    """A restarted broker without persistence forgot the retained ``online``: it is sent again."""
    from edge_agent.config import MqttConfig
    from edge_agent.mqtt_client import MqttPublisher
    from edge_agent.outbox import Outbox

    cfg = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        protocol=protocol,  # type: ignore[arg-type]
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    box = Outbox(tmp_path / "outbox.sqlite3", max_bytes=1 << 20, max_age_s=60)
    collector = Collector(mosquitto, T + "available", protocol=protocol)
    publisher = MqttPublisher(cfg, box, "dev1", None)
    try:
        publisher.start()
        assert collector.wait_for(lambda ms: [m.payload for m in ms] == [b"online"], 10)
        mosquitto.restart()
        assert collector.wait_subscribed(2)
        # (A broker shutting down may send the wills first: online, offline, online.)
        assert collector.wait_for(
            lambda ms: (
                [m.payload for m in ms].count(b"online") == 2 and ms[-1].payload == b"online"
            ),
            10,
        )
        publisher.stop(5)
        assert collector.wait_for(lambda ms: ms[-1].payload == b"offline", 10)
    finally:
        publisher.stop(1)
        collector.close()
        box.close()
    for m in collector.messages:
        assert_valid("availability", m.payload.decode("utf-8"))
