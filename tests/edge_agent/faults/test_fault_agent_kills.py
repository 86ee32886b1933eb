"""The agent SIGKILLed three times during 2,000 frames and started again each time.

No drain, no flush: whatever was in the pipeline, the outbox or the MQTT window is recovered
from the ledger (files not done are read again) and the outbox (messages not acknowledged are
sent again). A kill can cost duplicates, never a result: the messages of one window whose PUBACK
came but whose row was not yet deleted, and the results of the last batch whose files were not
yet marked done.
"""

from __future__ import annotations

from fault_kit import MAX_BATCH, MAX_IN_FLIGHT, Feeder, Rig, figures, record, tally

FRAMES = 2000
RATE = 150.0
KILL_AT = (400, 900, 1400)


def test_agent_killed_three_times_loses_nothing(rig: Rig) -> None:
    consumer = rig.consumer
    agent = rig.start_agent()
    feeder = Feeder(rig.inbox, FRAMES, RATE).start()
    for at in KILL_AT:
        assert feeder.wait_dropped(at), "feeder stalled"
        assert agent.alive, agent.log_tail()
        agent.kill()
        # The stream goes on while the agent is down (files wait in the folder).
        assert feeder.wait_dropped(at + 50), "feeder stalled"
        agent.start()
        assert agent.wait_ready(60), agent.log_tail()
    feeder.finish()
    delivered = consumer.wait_refs(feeder.names, 240)
    t = tally(consumer, feeder.names)
    alive = agent.alive
    code = agent.stop()
    bound = len(KILL_AT) * (MAX_IN_FLIGHT + MAX_BATCH)
    record(
        "agent_killed",
        {
            "injected": "agent SIGKILLed 3 times mid-stream, restarted each time",
            **figures(t, agent, code),
            "duplicate_bound": bound,
            "agent_starts": agent.starts,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert alive and code == 0, agent.log_tail()
    assert t.duplicates <= bound, t
