"""The agent SIGKILLed three times during 2,000 frames and started again each time.

No drain, no flush: whatever was in the pipeline, the outbox or the MQTT window is recovered
from the ledger (files not done are read again) and the outbox (messages not acknowledged are
sent again). A kill can cost duplicates, never a result: the messages of one window whose PUBACK
came but whose row was not yet deleted, and the results of the last batch whose files were not
yet marked done.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fault_kit import (
    MAX_BATCH,
    MAX_IN_FLIGHT,
    AgentProcess,
    Consumer,
    Feeder,
    fault_config,
    mib,
    record,
    tally,
)
from mqtt_broker import MosquittoBroker

FRAMES = 2000
RATE = 150.0
KILL_AT = (400, 900, 1400)


def test_agent_killed_three_times_loses_nothing(
    tmp_path: Path,
    tiny_bundle: Path,
    persistent_broker: MosquittoBroker,
    consumer_of: Callable[[MosquittoBroker], Consumer],
    agent_of: Callable[..., AgentProcess],
) -> None:
    broker = persistent_broker
    consumer = consumer_of(broker)
    agent = agent_of(fault_config(tmp_path, tiny_bundle, broker))
    assert agent.wait_ready(60), agent.log_tail()
    feeder = Feeder(tmp_path / "inbox", FRAMES, RATE).start()
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
            "frames_in": t.frames_in,
            "results_out": t.results_out,
            "messages": t.messages,
            "lost": t.lost,
            "duplicates": t.duplicates,
            "duplicate_bound": bound,
            "peak_rss_mib": mib(agent.peak_rss),
            "agent_starts": agent.starts,
            "agent_exit_code": code,
        },
    )
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert alive and code == 0, agent.log_tail()
    assert t.duplicates <= bound, t
