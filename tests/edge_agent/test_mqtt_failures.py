"""Connection failures against a real Mosquitto: each one logged with its cause, reported in
``health()`` and by ``edge-agent check``, and nothing lost once it is fixed.

No broker, wrong password, an ACL that forbids the agent's topics, a CA that did not sign the
broker's certificate.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import Collector, MosquittoBroker, free_port, require_mosquitto
from mqtt_testkit import publisher_config, roomy_outbox, server_pki, tls_listener, wait_until
from tls_pki import require_openssl

from edge_agent.check import probe_broker
from edge_agent.config import MqttConfig
from edge_agent.mqtt_client import MqttPublisher
from edge_agent.outbox import Outbox
from edge_agent.payloads import topic

pytestmark = pytest.mark.mqtt

DEVICE = "jetson-01"
MODEL = {"name": "mobilevit_s", "sha256": "ab" * 32, "precision": "fp16"}
CLS = topic("galaxy-edge", DEVICE, "classifications")


def config(port: int, tmp_path: Path, **kw: object) -> MqttConfig:
    return publisher_config(
        "127.0.0.1", port, tmp_path, max_in_flight=8, reconnect_min_s=0.1, reconnect_max_s=0.3,
        **kw,
    )  # fmt: skip


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = roomy_outbox(tmp_path)
    ids = [f"msg-{i:03d}" for i in range(20)]
    box.put_many((CLS, json.dumps({"id": m}).encode(), 1, m) for m in ids)
    yield box
    box.close()


def ids_on(collector: Collector) -> set[str]:
    return {json.loads(m.payload)["id"] for m in collector.on(CLS)}


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The publisher's connection lines (the availability link has its own, "mqtt availability")."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "edge_agent.mqtt_connection" and r.getMessage().startswith("mqtt: ")
    ]


def test_no_broker_is_logged_once_counted_then_delivered(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    port = free_port()
    cfg = config(port, tmp_path)
    assert "connection refused" in (probe_broker(cfg) or "")
    pub = MqttPublisher(cfg, outbox, DEVICE, MODEL)
    broker = MosquittoBroker(port=port, workdir=tmp_path / "broker")
    with caplog.at_level(logging.INFO):
        pub.start()
        try:
            assert wait_until(lambda: pub.health()["failed_attempts"] >= 5)
            health = pub.health()
            assert health["connected"] is False and health["since"] is not None
            assert "connection refused" in health["last_error"]
            lines = failure_lines(caplog)
            assert len(lines) == 1  # rate-limited: the same cause is not repeated per attempt
            assert lines[0].startswith(f"mqtt: cannot reach 127.0.0.1:{port} (connection refused)")
            broker.start()
            collector = Collector(broker)
            assert pub.wait_drained(15), pub.last_error
            assert ids_on(collector) == {f"msg-{i:03d}" for i in range(20)}
            assert pub.health()["connected"] is True
            assert pub.health()["failed_attempts"] == 0
            assert any("connected after" in m for m in failure_lines(caplog))
            collector.close()
        finally:
            pub.stop(2)
            broker.close()


def test_wrong_password_is_named_and_nothing_is_lost(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), DEVICE, "s3cret"], check=True, timeout=30
    )
    broker = MosquittoBroker(
        workdir=tmp_path / "broker",
        listener_options=[f"password_file {passwd}"],
        allow_anonymous=False,
    ).start()
    try:
        cfg = config(broker.port, tmp_path, username=DEVICE)
        problem = probe_broker(cfg.model_copy(update={"password_file": None}))
        assert problem is not None and "refused the connection" in problem
        wrong = MqttPublisher(cfg, outbox, DEVICE, MODEL, password="nope")
        with caplog.at_level(logging.INFO):
            wrong.start()
            assert wait_until(lambda: wrong.health()["failed_attempts"] >= 2)
            wrong.stop(1)
        line = failure_lines(caplog)[0]
        assert "broker refused the connection" in line and f"user '{DEVICE}'" in line
        assert "mqtt.username" in line and "nope" not in line
        assert outbox.depth() == 20
        # Fixed (the right password): everything goes out.
        right = MqttPublisher(cfg, outbox, DEVICE, MODEL, password="s3cret")
        right.start()
        try:
            assert right.wait_drained(15), right.last_error
            assert outbox.depth() == 0
        finally:
            right.stop(2)
    finally:
        broker.close()


def test_acl_that_forbids_publishing_keeps_the_messages(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 5: mosquitto answers PUBACK 0x87 Not authorized; those messages must stay."""
    require_mosquitto()
    acl = tmp_path / "acl"
    acl.write_text(f"user {DEVICE}\ntopic read galaxy-edge/#\n\npattern readwrite $SYS/#\n")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), DEVICE, "pw"], check=True, timeout=30)
    broker = MosquittoBroker(
        workdir=tmp_path / "broker",
        listener_options=[f"password_file {passwd}", f"acl_file {acl}"],
        allow_anonymous=False,
    ).start()
    pub = MqttPublisher(
        config(broker.port, tmp_path, username=DEVICE),
        outbox,
        DEVICE,
        MODEL,
        password="pw",
        reject_retry_s=1.0,
    )
    try:
        with caplog.at_level(logging.INFO):
            pub.start()
            assert pub.wait_connected(10), pub.last_error
            assert wait_until(lambda: pub.counters()["rejected"] >= 8)
            time.sleep(0.3)
            assert outbox.depth() == 20  # refused is not delivered: nothing deleted
            assert pub.counters()["acked"] == 0
            assert pub.health()["refused_topics"] == {CLS: "Not authorized"}
            refusals = [
                r.getMessage() for r in caplog.records if "refuses messages" in r.getMessage()
            ]
            assert len(refusals) == 1  # once, not once per message
            assert f"refuses messages on {CLS}: Not authorized" in refusals[0]
            assert f"allow user {DEVICE} to publish to galaxy-edge/{DEVICE}/#" in refusals[0]
            # The topic is backed off: no storm of refused publishes within the retry time.
            before = pub.counters()["published"]
            time.sleep(0.5)
            assert pub.counters()["published"] - before <= 8
            # Fixed: the broker reloads its ACL on SIGHUP; the next retry gets through.
            acl.write_text(f"user {DEVICE}\ntopic readwrite galaxy-edge/#\n")
            assert broker._proc is not None
            broker._proc.send_signal(signal.SIGHUP)
            assert pub.wait_drained(20), pub.health()
            assert pub.health()["refused_topics"] == {}
            assert any("accepts messages on" in r.getMessage() for r in caplog.records)
    finally:
        pub.stop(2)
        broker.close()


def test_wrong_ca_is_called_a_tls_verification_failure(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    require_mosquitto()
    require_openssl()
    pki = tmp_path / "pki"
    other_ca = server_pki(pki, "IP:127.0.0.1,DNS:localhost", "someone else's CA")
    broker = MosquittoBroker(
        workdir=tmp_path / "broker", listener_options=tls_listener(pki)
    ).start()
    try:
        wrong_cfg = config(broker.port, tmp_path, tls={"ca_file": other_ca})
        problem = probe_broker(wrong_cfg)
        assert problem is not None
        assert problem.startswith(f"mqtt: TLS: the broker's certificate at 127.0.0.1:{broker.port}")
        assert f"is not signed by mqtt.tls.ca_file ({other_ca})" in problem
        assert "is the broker running" not in problem
        wrong = MqttPublisher(wrong_cfg, outbox, DEVICE, MODEL)
        with caplog.at_level(logging.INFO):
            wrong.start()
            assert wait_until(lambda: wrong.health()["failed_attempts"] >= 2)
            wrong.stop(1)
        lines = failure_lines(caplog)
        assert "TLS: the broker's certificate" in lines[0] and "not signed by" in lines[0]
        assert "is the broker running" not in lines[0]
        assert outbox.depth() == 20
        right_cfg = config(broker.port, tmp_path, tls={"ca_file": pki / "ca.pem"})
        assert probe_broker(right_cfg) is None
        right = MqttPublisher(right_cfg, outbox, DEVICE, MODEL)
        right.start()
        try:
            assert right.wait_drained(15), right.last_error
        finally:
            right.stop(2)
        assert outbox.depth() == 0
    finally:
        broker.close()
