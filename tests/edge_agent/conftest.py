"""Fixtures of the edge agent's tests (helpers live in agent_testkit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import make_bundle
from mqtt_broker import MosquittoBroker, require_mosquitto


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    make_bundle(path)
    return path


@pytest.fixture
def persistent_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """Mosquitto that keeps sessions and queued messages across a clean restart."""
    require_mosquitto()
    broker = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto-p"), persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
