"""MqttPublisher against a real Mosquitto (tests/mqtt_broker.py): PUBACK, window, outages, will."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import Collector, MosquittoBroker, free_port, require_mosquitto
from mqtt_testkit import publisher_config, roomy_outbox, tls_listener, wait_until
from tls_pki import issue, make_ca, require_openssl

from edge_agent.config import MqttConfig, TlsConfig
from edge_agent.mqtt_client import MqttError, MqttPublisher
from edge_agent.outbox import Outbox
from edge_agent.payloads import topic

pytestmark = pytest.mark.mqtt

DEVICE = "jetson-01"
MODEL = {"name": "mobilevit_s", "sha256": "ab" * 32, "precision": "fp16"}
CLS = topic("galaxy-edge", DEVICE, "classifications")
STATUS = topic("galaxy-edge", DEVICE, "status")


def make_config(
    broker: MosquittoBroker, tmp_path: Path, protocol: str = "5", window: int = 8, **kw: object
) -> MqttConfig:
    return publisher_config(
        broker.host, broker.port, tmp_path, protocol=protocol, max_in_flight=window,
        reconnect_min_s=0.2, reconnect_max_s=1.0, **kw,
    )  # fmt: skip


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = roomy_outbox(tmp_path)
    yield box
    box.close()


def put_range(box: Outbox, start: int, stop: int) -> list[str]:
    ids = [f"msg-{i:04d}" for i in range(start, stop)]
    box.put_many((CLS, json.dumps({"id": m}).encode(), 1, m) for m in ids)
    return ids


def ids_on(collector: Collector, topic_: str = CLS) -> set[str]:
    return {json.loads(m.payload)["id"] for m in collector.on(topic_)}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acked_only_on_puback_with_bounded_window(
    mosquitto: MosquittoBroker, tmp_path: Path, outbox: Outbox, protocol: str
) -> None:
    collector = Collector(mosquitto, "galaxy-edge/#", protocol=protocol)
    pub = MqttPublisher(make_config(mosquitto, tmp_path, protocol, window=3), outbox, DEVICE, MODEL)
    try:
        pub.start()
        assert pub.wait_connected(10), pub.last_error
        mosquitto.pause()  # the broker reads nothing and acknowledges nothing
        ids = put_range(outbox, 0, 20)
        pub.kick()
        assert wait_until(lambda: pub.counters()["published"] == 3)
        time.sleep(0.5)  # give a buggy pump time to overrun the window or ack early
        assert pub.counters()["published"] == 3  # the window holds
        assert pub.in_flight() == 3
        assert pub.counters()["acked"] == 0
        assert outbox.depth() == 20  # nothing deleted without a PUBACK
        mosquitto.resume()
        assert pub.wait_drained(20)
        assert outbox.depth() == 0
        assert collector.wait_for(lambda _: ids_on(collector) == set(ids), 10)
        counts = pub.counters()
        assert counts["acked"] == 20 and counts["published"] == 20 and counts["resent"] == 0
        # Exact bytes on the wire, QoS 1.
        first = next(m for m in collector.on(CLS) if json.loads(m.payload)["id"] == ids[0])
        assert first.payload == json.dumps({"id": ids[0]}).encode() and first.qos == 1
    finally:
        mosquitto.resume()
        pub.stop(2)
        collector.close()


@pytest.mark.slow
def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, outbox: Outbox) -> None:
    """Unacknowledged messages in flight when the broker dies are resent after it returns."""
    require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path / "broker", persistence=True).start()
    collector = Collector(broker, "galaxy-edge/+/classifications", persistent_session=True)
    pub = MqttPublisher(make_config(broker, tmp_path, window=8), outbox, DEVICE, MODEL)
    try:
        pub.start()
        first = put_range(outbox, 0, 30)
        pub.kick()
        assert pub.wait_drained(20)
        assert collector.wait_for(lambda _: ids_on(collector) >= set(first), 10)
        broker.save()  # the consumer's persistent session survives the broker's death

        broker.pause()
        second = put_range(outbox, 30, 100)
        pub.kick()
        assert wait_until(lambda: pub.in_flight() == 8)
        broker.kill()  # 8 messages were sent and never acknowledged
        assert wait_until(lambda: not pub.connected)
        more = put_range(outbox, 100, 120)  # results keep coming during the outage
        assert outbox.depth() == 90
        broker.start()

        assert pub.wait_drained(30), pub.last_error
        assert outbox.depth() == 0
        everything = set(first) | set(second) | set(more)
        assert collector.wait_for(lambda _: ids_on(collector) >= everything, 15), sorted(
            everything - ids_on(collector)
        )[:10]
        counts = pub.counters()
        assert counts["resent"] >= 8
        assert counts["connects"] >= 2
        assert counts["acked"] == 120
    finally:
        pub.stop(2)
        collector.close()
        broker.close()


def test_outbox_left_by_a_previous_run_is_sent_at_start(
    mosquitto: MosquittoBroker, tmp_path: Path, outbox: Outbox
) -> None:
    ids = put_range(outbox, 0, 10)
    outbox.mark_in_flight(ids[:4])  # a previous publisher's marks ...
    outbox.release_in_flight()  # ... do not survive it (they live in memory)
    collector = Collector(mosquitto, CLS)
    pub = MqttPublisher(make_config(mosquitto, tmp_path), outbox, DEVICE, MODEL)
    try:
        pub.start()
        assert pub.wait_drained(10)
        assert collector.wait_for(lambda _: ids_on(collector) == set(ids), 10)
    finally:
        pub.stop(2)
        collector.close()


def test_stop_publishes_offline_and_keeps_unacked(
    mosquitto: MosquittoBroker, tmp_path: Path, outbox: Outbox
) -> None:
    collector = Collector(mosquitto, STATUS)
    pub = MqttPublisher(make_config(mosquitto, tmp_path, window=4), outbox, DEVICE, MODEL)
    pub.start()
    assert pub.wait_connected(10)
    assert collector.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), 10)
    online = json.loads(collector.on(STATUS)[-1].payload)
    assert online["state"] == "online" and online["model"] == MODEL
    assert online["device_id"] == DEVICE and "at" in online

    mosquitto.pause()
    put_range(outbox, 0, 10)
    pub.kick()
    assert wait_until(lambda: pub.in_flight() == 4)
    t0 = time.monotonic()
    assert pub.stop(1.0) is False  # could not drain a frozen broker
    assert time.monotonic() - t0 < 3.0
    mosquitto.resume()
    assert outbox.depth() == 10  # all kept for the next start
    assert len(outbox.take_unsent(100)) == 10  # and none left marked in flight

    # A clean stop on a live broker: explicit retained offline (the will is discarded).
    pub2 = MqttPublisher(make_config(mosquitto, tmp_path), outbox, DEVICE, MODEL)
    pub2.start()
    assert pub2.wait_drained(10)
    assert pub2.stop(5) is True
    assert collector.wait_for(
        lambda ms: json.loads(ms[-1].payload)["state"] == "offline" and len(ms) >= 3, 10
    )
    collector.close()
    late = Collector(mosquitto, STATUS)  # a consumer arriving later gets the retained state
    try:
        assert late.wait_for(lambda ms: len(ms) >= 1, 10)
        assert late.messages[0].retain
        assert json.loads(late.messages[0].payload)["state"] == "offline"
    finally:
        late.close()


_PUBLISHER_CHILD = textwrap.dedent(
    """
    import sys, time
    from edge_agent.config import MqttConfig
    from edge_agent.mqtt_client import MqttPublisher
    from edge_agent.outbox import Outbox
    cfg = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), protocol=sys.argv[3])
    box = Outbox(sys.argv[2], max_bytes=1 << 20, max_age_s=60)
    pub = MqttPublisher(cfg, box, "jetson-01", {"name": "m", "sha256": "s", "precision": "fp16"})
    pub.start()
    assert pub.wait_connected(10)
    print("CONNECTED", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_birth_and_last_will_on_kill(
    mosquitto: MosquittoBroker, tmp_path: Path, protocol: str
) -> None:
    collector = Collector(mosquitto, STATUS, protocol=protocol)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PUBLISHER_CHILD,
            str(mosquitto.port),
            str(tmp_path / "o"),
            protocol,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "CONNECTED"
        assert collector.wait_for(lambda ms: len(ms) >= 1, 10)
        birth = json.loads(collector.messages[0].payload)
        assert birth["state"] == "online" and birth["model"]["name"] == "m"
        late = Collector(mosquitto, STATUS, protocol=protocol)
        assert late.wait_for(lambda ms: len(ms) >= 1, 10)
        assert late.messages[0].retain  # retained birth
        late.close()
        os.kill(child.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        child.wait(10)
        assert collector.wait_for(lambda ms: len(ms) >= 2, 10), mosquitto.log_tail()
        will = json.loads(collector.messages[-1].payload)
        assert will["state"] == "offline" and "at" not in will
        late = Collector(mosquitto, STATUS, protocol=protocol)
        assert late.wait_for(lambda ms: len(ms) >= 1, 10)
        assert late.messages[0].retain and json.loads(late.messages[0].payload) == will
        late.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        collector.close()


def test_publish_direct_and_model_update(
    mosquitto: MosquittoBroker, tmp_path: Path, outbox: Outbox
) -> None:
    stats = topic("galaxy-edge", DEVICE, "stats")
    collector = Collector(mosquitto, "galaxy-edge/#")
    pub = MqttPublisher(make_config(mosquitto, tmp_path), outbox, DEVICE, MODEL)
    assert pub.publish_direct(stats, b"{}") is False  # not connected: skipped, not queued
    try:
        pub.start()
        assert pub.wait_connected(10)
        assert pub.publish_direct(stats, b'{"n":1}') is True
        assert collector.wait_for(lambda _: len(collector.on(stats)) == 1, 10)
        assert collector.on(stats)[0].qos == 0
        assert outbox.depth() == 0  # QoS 0 stats never touch the outbox
        pub.update_model_info({**MODEL, "precision": "int8"})
        assert collector.wait_for(
            lambda _: any(b'"int8"' in m.payload for m in collector.on(STATUS)), 10
        )
    finally:
        pub.stop(2)
        collector.close()


def test_configuration_errors_are_clear(tmp_path: Path, outbox: Outbox) -> None:
    broker_less = MqttConfig(host="127.0.0.1", port=1)
    with pytest.raises(MqttError, match="username"):
        MqttPublisher(broker_less, outbox, DEVICE, MODEL, password="secret")
    tls = MqttConfig(tls=TlsConfig(ca_file=tmp_path / "missing-ca.pem"))
    with pytest.raises(MqttError, match=r"mqtt\.tls\.ca_file: .*missing-ca\.pem"):
        MqttPublisher(tls, outbox, DEVICE, MODEL)
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    half = MqttConfig(tls=TlsConfig(cert_file=cert))
    with pytest.raises(MqttError, match="set both"):
        MqttPublisher(half, outbox, DEVICE, MODEL)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    require_openssl()
    d = tmp_path / "pki"
    make_ca(d)
    issue(d, "server", "broker", "IP:127.0.0.1,DNS:localhost")
    issue(d, "client", DEVICE, None)
    return d


def _start_broker(tmp_path: Path, options: list[str], anonymous: bool) -> MosquittoBroker:
    require_mosquitto()
    return MosquittoBroker(
        workdir=tmp_path / "broker", listener_options=options, allow_anonymous=anonymous
    ).start()


def test_mutual_tls(tmp_path: Path, outbox: Outbox, pki: Path) -> None:
    broker = _start_broker(
        tmp_path,
        tls_listener(pki, "require_certificate true"),
        anonymous=True,
    )
    tls = {
        "ca_file": pki / "ca.pem",
        "cert_file": pki / "client.pem",
        "key_file": pki / "client.key",
    }
    try:
        pub = MqttPublisher(make_config(broker, tmp_path, tls=tls), outbox, DEVICE, MODEL)
        pub.start()
        put_range(outbox, 0, 3)
        assert pub.wait_drained(15), pub.last_error
        assert pub.stop(5)
        # Without the client certificate the broker refuses the handshake: nothing is lost,
        # the publisher keeps retrying and says why it is not connected.
        put_range(outbox, 3, 4)
        bad = MqttPublisher(
            make_config(broker, tmp_path, tls={"ca_file": pki / "ca.pem"}), outbox, DEVICE, MODEL
        )
        bad.start()
        assert not bad.wait_connected(2)
        assert bad.last_error is not None
        assert "client certificate" in bad.last_error
        bad.stop(1)
        assert outbox.depth() == 1
    finally:
        broker.close()


def test_username_and_password(tmp_path: Path, outbox: Outbox) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), DEVICE, "s3cret"], check=True, timeout=30
    )
    broker = _start_broker(tmp_path, [f"password_file {passwd}"], anonymous=False)
    try:
        good = MqttPublisher(
            make_config(broker, tmp_path, username=DEVICE), outbox, DEVICE, MODEL, password="s3cret"
        )
        good.start()
        assert good.wait_connected(10), good.last_error
        good.stop(2)
        wrong = MqttPublisher(
            make_config(broker, tmp_path, username=DEVICE), outbox, DEVICE, MODEL, password="nope"
        )
        wrong.start()
        assert not wrong.wait_connected(2)
        assert wrong.last_error is not None and "refused" in wrong.last_error
        assert "nope" not in wrong.last_error
        wrong.stop(1)
    finally:
        broker.close()


def test_window_shrinks_to_the_brokers_receive_maximum(tmp_path: Path, outbox: Outbox) -> None:
    """MQTT 5: more unacknowledged QoS 1 messages than the broker's Receive Maximum would get
    the publisher disconnected (0x93); the window leaves one slot for the status messages."""
    require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path / "broker", max_inflight=5).start()
    pub = MqttPublisher(make_config(broker, tmp_path, window=50), outbox, DEVICE, MODEL)
    try:
        pub.start()
        assert pub.wait_connected(10)
        broker.pause()
        put_range(outbox, 0, 30)
        pub.kick()
        assert wait_until(lambda: pub.in_flight() == 4)
        time.sleep(0.3)
        assert pub.in_flight() == 4
        broker.resume()
        assert pub.wait_drained(15)
        assert pub.counters()["connects"] == 1  # never kicked out for exceeding it
    finally:
        broker.resume()
        pub.stop(2)
        broker.close()


def test_stop_keeps_its_timeout_without_a_broker(tmp_path: Path, outbox: Outbox) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=free_port(), reconnect_min_s=0.2, reconnect_max_s=5)
    pub = MqttPublisher(cfg, outbox, DEVICE, MODEL)
    pub.start()
    put_range(outbox, 0, 5)
    assert not pub.wait_connected(0.5)
    assert pub.last_error is not None and "connection refused" in pub.last_error
    t0 = time.monotonic()
    assert pub.stop(0.5) is False
    assert time.monotonic() - t0 < 1.5
    assert outbox.depth() == 5
