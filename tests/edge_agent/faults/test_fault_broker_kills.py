"""The broker killed three times during 2,000 frames, once with messages truly in flight.

Twice a plain SIGKILL; once SIGSTOP first, so the broker holds the agent's PUBLISH packets
unread and unacknowledged (the agent's in-flight window full), then SIGKILL. Each time the
broker comes back from its persistence file, as a supervised broker would. The consumer's
session was saved before the stream began, so what the agent publishes after a restart is
queued for it even before it reconnects.
"""

from __future__ import annotations

from pathlib import Path

from fault_kit import MAX_IN_FLIGHT, Feeder, Rig, figures, outbox_depth, record, tally, wait_until

FRAMES = 2000
RATE = 150.0  # frames per second: the stream lasts long enough for three outages
KILL_AT = (400, 900, 1400)


def test_broker_killed_three_times_loses_nothing(rig: Rig) -> None:
    broker, consumer = rig.broker, rig.consumer
    cfg = rig.config()
    agent = rig.start_agent(cfg)
    outbox = Path(cfg["mqtt"]["outbox"]["path"])
    feeder = Feeder(rig.inbox, FRAMES, RATE).start()
    in_flight_at_kill = 0
    for k, at in enumerate(KILL_AT):
        assert feeder.wait_dropped(at), "feeder stalled"
        if k == 1:
            broker.pause()
            # The agent keeps classifying into its outbox and publishing into the stopped
            # broker's socket: once the outbox holds more than a window, the window is full.
            assert wait_until(lambda: outbox_depth(outbox) > 2 * MAX_IN_FLIGHT, 60), (
                agent.log_tail()
            )
            in_flight_at_kill = outbox_depth(outbox)
        broker.kill()
        # Down while the stream goes on: the agent spools.
        assert feeder.wait_dropped(at + 150), "feeder stalled"
        broker.start()
        assert agent.alive, agent.log_tail()
    feeder.finish()
    delivered = consumer.wait_refs(feeder.names, 240)
    t = tally(consumer, feeder.names)
    alive = agent.alive
    code = agent.stop()
    record(
        "broker_killed",
        {
            "injected": "broker SIGKILLed 3 times (once after SIGSTOP with the window full)",
            **figures(t, agent, code),
            "duplicate_bound": len(KILL_AT) * MAX_IN_FLIGHT,
            "outbox_depth_at_sigstop_kill": in_flight_at_kill,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert alive and code == 0, agent.log_tail()
    # A result is resent only when its PUBACK was lost with the connection: at most one
    # window per outage.
    assert t.duplicates <= len(KILL_AT) * MAX_IN_FLIGHT, t
