"""The broker is down when the agent starts: it starts anyway (READY=1), spools, delivers later.

A device that boots before its broker, or whose network comes up late, must classify from the
first frame; the durable outbox holds the results until the broker is there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fault_kit import (
    MAX_IN_FLIGHT,
    AgentProcess,
    Consumer,
    Feeder,
    fault_config,
    mib,
    outbox_depth,
    record,
    tally,
    wait_until,
)
from mqtt_broker import MosquittoBroker

FRAMES = 300


def test_broker_down_at_start_spools_then_delivers(
    tmp_path: Path,
    tiny_bundle: Path,
    persistent_broker: MosquittoBroker,
    consumer_of: Callable[[MosquittoBroker], Consumer],
    agent_of: Callable[..., AgentProcess],
) -> None:
    broker = persistent_broker
    consumer = consumer_of(broker)  # its session is kept while the broker is down
    broker.stop()
    cfg = fault_config(tmp_path, tiny_bundle, broker)
    agent = agent_of(cfg)
    assert agent.wait_ready(60), agent.log_tail()
    feeder = Feeder(tmp_path / "inbox", FRAMES, rate=300.0).start()
    feeder.finish()
    outbox = Path(cfg["mqtt"]["outbox"]["path"])
    spooled = wait_until(lambda: outbox_depth(outbox) >= FRAMES, 120)
    depth = outbox_depth(outbox)
    assert spooled, (depth, agent.log_tail())
    assert agent.alive, agent.log_tail()
    broker.start()
    delivered = consumer.wait_refs(feeder.names, 120)
    t = tally(consumer, feeder.names)
    drained = wait_until(lambda: outbox_depth(outbox) == 0, 60)
    code = agent.stop()
    record(
        "broker_down_at_start",
        {
            "injected": "no broker when the agent starts; it comes up after all frames",
            "frames_in": t.frames_in,
            "results_out": t.results_out,
            "messages": t.messages,
            "lost": t.lost,
            "duplicates": t.duplicates,
            "spooled_in_outbox": depth,
            "peak_rss_mib": mib(agent.peak_rss),
            "agent_exit_code": code,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert drained, "the outbox kept messages the broker acknowledged"
    assert code == 0, agent.log_tail()
    assert t.duplicates <= MAX_IN_FLIGHT, t
