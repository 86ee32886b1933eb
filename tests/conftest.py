"""Fixtures shared across the test tree. Keep this small: helpers live in their own modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mqtt_broker import MosquittoBroker, require_mosquitto


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free loopback port; skipped without the binary (failed in CI)."""
    require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
