"""Why a connection failed, in words an operator can act on; and how often it is said."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, TlsConfig
from edge_agent.mqtt_connection import ConnectionHealth, describe_connect_error, describe_refusal


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.fixture
def tls_config(tmp_path: Path) -> MqttConfig:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    return MqttConfig(host="broker.lan", port=8883, tls=TlsConfig(ca_file=ca))


def test_untrusted_certificate_names_the_ca_file(tls_config: MqttConfig) -> None:
    line = describe_connect_error(
        _verify_error(20, "unable to get local issuer certificate"), tls_config
    )
    assert line.startswith("TLS: the broker's certificate at broker.lan:8883 is not signed by")
    assert f"mqtt.tls.ca_file ({tls_config.tls.ca_file})" in line  # type: ignore[union-attr]
    assert "is the broker running" not in line
    system = MqttConfig(host="broker.lan", port=8883, tls=TlsConfig())
    line = describe_connect_error(_verify_error(19, "self-signed certificate in chain"), system)
    assert "a CA of the system's store" in line and "set mqtt.tls.ca_file" in line


def test_name_mismatch_and_expiry_are_told_apart(tls_config: MqttConfig) -> None:
    line = describe_connect_error(_verify_error(62, "Hostname mismatch"), tls_config)
    assert "not valid for the name 'broker.lan'" in line and "subjectAltName" in line
    line = describe_connect_error(_verify_error(10, "certificate has expired"), tls_config)
    assert "validity" in line and "clock" in line


def test_other_tls_and_network_failures(tls_config: MqttConfig) -> None:
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert "does this port speak TLS?" in describe_connect_error(plain, tls_config)
    cfg = MqttConfig(host="broker.lan", port=1883)
    refused = describe_connect_error(ConnectionRefusedError(111, "Connection refused"), cfg)
    assert refused == (
        "cannot reach broker.lan:1883 (connection refused); is the broker running, on this port?"
    )
    dns = describe_connect_error(socket.gaierror(-2, "Name or service not known"), cfg)
    assert "cannot resolve 'broker.lan'" in dns and "mqtt.host" in dns
    assert "timed out" in describe_connect_error(TimeoutError("timed out"), cfg)
    assert "No route to host" in describe_connect_error(OSError(113, "No route to host"), cfg)
    assert describe_connect_error(None, cfg) == "cannot connect to broker.lan:1883"


def test_refusals_name_the_credentials_never_the_password() -> None:
    cfg = MqttConfig(username="cam", password_file=None)
    bad = describe_refusal("Bad user name or password", cfg)
    assert "user 'cam'" in bad and "mqtt.username" in bad and "password_file" in bad
    anon = describe_refusal("Not authorized", MqttConfig())
    assert "no user name" in anon and "credentials" in anon
    assert "mqtt.client_id" in describe_refusal("Client identifier not valid", cfg)
    assert describe_refusal("Server busy", cfg) == "broker refused the connection: Server busy"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_logs_the_first_failure_then_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = ConnectionHealth("mqtt", log_every_s=60.0, clock=clock, wall=lambda: 1.8e9)
    with caplog.at_level(logging.INFO, logger="edge_agent.mqtt_connection"):
        for _ in range(10):
            health.failed("cannot reach b:1883 (connection refused)")
            clock.now += 1
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage() == (
            "mqtt: cannot reach b:1883 (connection refused) (retrying; results wait in the outbox)"
        )
        clock.now += 60
        health.failed("cannot reach b:1883 (connection refused)")
        assert len(caplog.records) == 2
        assert "still not connected after 11 attempts in 70 s (10 since the last report)" in (
            caplog.records[1].getMessage()
        )
        health.failed("TLS: the broker's certificate ...")  # a new cause is told at once
        assert len(caplog.records) == 3
        assert health.snapshot() == {
            "connected": False,
            "since": 1.8e9,
            "last_error": "TLS: the broker's certificate ...",
            "failed_attempts": 12,
        }
        health.succeeded()
        assert "connected after 12 failed attempts in 70 s" in caplog.records[3].getMessage()
    snap = health.snapshot()
    assert snap["connected"] is True and snap["failed_attempts"] == 0
    assert snap["last_error"] is None
    health.lost("connection lost")
    assert health.snapshot()["connected"] is False
    assert health.snapshot()["failed_attempts"] == 0
