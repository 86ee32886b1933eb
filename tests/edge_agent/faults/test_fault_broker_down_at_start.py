"""The broker is down when the agent starts: it starts anyway (READY=1), spools, delivers later.

A device that boots before its broker, or whose network comes up late, must classify from the
first frame; the durable outbox holds the results until the broker is there.
"""

from __future__ import annotations

from pathlib import Path

from fault_kit import MAX_IN_FLIGHT, Feeder, Rig, figures, outbox_depth, record, tally, wait_until

FRAMES = 300


def test_broker_down_at_start_spools_then_delivers(rig: Rig) -> None:
    broker, consumer = rig.broker, rig.consumer  # its session is kept while the broker is down
    broker.stop()
    cfg = rig.config()
    agent = rig.start_agent(cfg)
    feeder = Feeder(rig.inbox, FRAMES, rate=300.0).start()
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
            **figures(t, agent, code),
            "spooled_in_outbox": depth,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert drained, "the outbox kept messages the broker acknowledged"
    assert code == 0, agent.log_tail()
    assert t.duplicates <= MAX_IN_FLIGHT, t
