"""Fixtures of the fault suite (marker ``faults``): a persistent broker, a counting consumer, the
agent as a process, each torn down even when a test fails half-way.

The suite lives under ``tests/edge_agent/`` because it proves the agent (tests mirror the source
tree) and so shares that folder's helpers (``agent_testkit``) and its ``tiny_bundle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import write_config
from fault_kit import AgentProcess, Consumer, Rig
from mqtt_broker import MosquittoBroker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.mqtt)


@pytest.fixture
def consumer_of() -> Iterator[Callable[[MosquittoBroker], Consumer]]:
    """``consumer_of(broker)``: a subscribed consumer whose session the broker has saved."""
    made: list[Consumer] = []

    def make(broker: MosquittoBroker) -> Consumer:
        consumer = Consumer(broker)
        made.append(consumer)
        if broker.persistence:
            broker.save()  # its subscription survives a SIGKILL of the broker
        return consumer

    yield make
    for consumer in made:
        consumer.close()


@pytest.fixture
def agent_of(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """``agent_of(config_dict)``: the config written and ``edge-agent run`` started on it."""
    made: list[AgentProcess] = []

    def make(
        cfg: dict[str, Any], env: dict[str, str] | None = None, wrap: list[str] | None = None
    ) -> AgentProcess:
        path = write_config(tmp_path / f"agent{len(made)}.yaml", cfg)
        agent = AgentProcess(path, tmp_path, env=env, wrap=wrap).start()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


@pytest.fixture
def rig_on(
    tmp_path: Path,
    tiny_bundle: Path,
    consumer_of: Callable[[MosquittoBroker], Consumer],
    agent_of: Callable[..., AgentProcess],
) -> Callable[[MosquittoBroker], Rig]:
    """``rig_on(broker)``: a scenario on ``broker``, its consumer subscribed before anything."""
    return lambda broker: Rig(tmp_path, tiny_bundle, broker, consumer_of(broker), agent_of)


@pytest.fixture
def rig(persistent_broker: MosquittoBroker, rig_on: Callable[[MosquittoBroker], Rig]) -> Rig:
    """A scenario on a broker that keeps the consumer's session across its own restarts."""
    return rig_on(persistent_broker)
