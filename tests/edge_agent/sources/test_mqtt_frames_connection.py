"""The ``mqtt://`` frames source says why it cannot connect (it used to be silent)."""

from __future__ import annotations

import logging
import time

import pytest
from mqtt_broker import free_port

from edge_agent.config import MqttConfig
from edge_agent.sources.base import FrameHub
from edge_agent.sources.mqtt_frames import MqttFrameSource


def test_no_broker_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    config = MqttConfig(reconnect_min_s=0.1, reconnect_max_s=0.2)
    hub = FrameHub()
    source = MqttFrameSource(
        "receivers", hub.queue("receivers", 8, "block"), ("png",),
        f"mqtt://127.0.0.1:{port}/rx", config, "dev1",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="edge_agent.mqtt_connection"):
        source.start()
        try:
            deadline = time.monotonic() + 10
            while source.connection.failed_attempts < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            source.stop(timeout=2.0)
    assert source.connection.failed_attempts >= 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        f"receivers: mqtt: cannot reach 127.0.0.1:{port} (connection refused); is the broker "
        "running, on this port? (retrying; no frames come in)"
    )
    assert len(lines) == 1  # the same cause, rate-limited
