"""Fixtures shared across the test tree. Keep this small: helpers live in their own modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from mqtt_broker import MosquittoBroker, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free loopback port; skipped without the binary (failed in CI)."""
    if find_mosquitto() is None:
        reason = "mosquitto is not installed (apt-get install -y mosquitto)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    broker = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
