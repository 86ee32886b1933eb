"""The whole agent during a broker outage, its outbox's file system full, then room again.

The reported defect: ``outbox write failed (database or disk is full)``, exit 1, again and
again, and the same acknowledged messages re-sent every second. Now: the agent stays up, holds
its frames where they are, says so in the log and in ``stats``, keeps delivering, and takes the
frames in again by itself once there is room.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
from agent_testkit import RunningAgent, agent_config, drop_file, galaxy_like, write_config
from jsonschema import Draft202012Validator
from mqtt_broker import Collector, MosquittoBroker
from small_filesystem import fill, small_filesystem

from edge_agent.ledger import FileKey
from edge_agent.schemas import closed_schema, load_schema

pytestmark = pytest.mark.mqtt
T = "galaxy-edge/dev1/"
FRAMES = 24


def _refs(collector: Collector) -> list[str]:
    return [
        json.loads(m.payload)["frame_ref"].rsplit("@", 1)[0]
        for m in collector.on(T + "classifications")
    ]


def _wait(pred: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("layout", ["outbox-alone", "with-ledger"])
def test_full_outbox_disk_is_back_pressure_then_everything_is_delivered(
    layout: str,
    tmp_path: Path,
    tiny_bundle: Path,
    persistent_broker: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mosquitto = persistent_broker
    with small_filesystem(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        cfg_dict = agent_config(
            tmp_path,
            tiny_bundle,
            mosquitto,
            mqtt={
                "host": mosquitto.host,
                "port": mosquitto.port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "max_in_flight": 8,
                "outbox": {"path": str(fs / "outbox.sqlite3"), "reserve_bytes": 128 * 1024},
            },
        )
        if layout == "with-ledger":  # the default layout: /var/lib/galaxy-edge holds both
            cfg_dict["state_dir"] = str(fs / "state")
        cfg = write_config(tmp_path / "agent.yaml", cfg_dict)
        inbox = tmp_path / "inbox"
        collector = Collector(mosquitto, persistent_session=True, client_id="consumer-1")
        validator = Draft202012Validator(closed_schema(load_schema("stats")))
        pngs = [cv2.imencode(".png", galaxy_like(i))[1].tobytes() for i in range(FRAMES)]
        try:
            with caplog.at_level(logging.INFO), RunningAgent(cfg) as agent:
                mosquitto.stop()  # an outage: results pile up in the outbox...
                files = [drop_file(inbox, f"g{i:02d}.png", pngs[i]) for i in range(8)]
                assert _wait(lambda: agent.outbox.depth() == 8)
                ballast = fill(fs)  # ...on a disk that fills up
                files += [drop_file(inbox, f"g{i:02d}.png", pngs[i]) for i in range(8, FRAMES)]
                assert _wait(lambda: agent.outbox.health().full), "the outbox never got full"
                stored = agent.outbox.depth()
                mosquitto.start()  # the broker returns while the disk is full
                assert collector.wait_subscribed(2)
                assert _wait(lambda: len(_refs(collector)) >= stored)
                assert _wait(lambda: agent.pipeline.outbox_writer.state().attempts >= 2)
                body = agent.stats_body()
                validator.validate(body)
                assert body["outbox"]["full"] is True and body["outbox"]["full_since"]
                assert "full" in body["outbox"]["error"]
                assert "OUTBOX DISK FULL" in agent.status_line()
                # Held frames stay where they are and are not done.
                delivered = set(_refs(collector))
                held = [f for f in files if str(f) not in delivered]
                assert held, "everything fitted: the test did not fill the disk"
                time.sleep(1.0)
                assert agent.pipeline.alive()
                for f in held:
                    assert f.exists()
                    assert agent.ledger.state(FileKey.of(f)) != "done"
                # Room again: everything is taken in and delivered, by itself.
                ballast.unlink()
                want = {str(f) for f in files}
                assert _wait(lambda: want <= set(_refs(collector)), 60), want - set(
                    _refs(collector)
                )
                assert _wait(lambda: not agent.outbox.health().full, 10)
                assert agent.stats_body()["outbox"]["full"] is False
            refs = _refs(collector)
            # No storm: a message acknowledged while its delete failed is not sent again.
            assert len(refs) - len(set(refs)) <= 8, len(refs) - len(set(refs))
            assert agent.publisher.counters()["resent"] <= 8
        finally:
            collector.close()
        text = caplog.text
        assert "outbox file system full" in text
        assert "back-pressure" in text
        assert "writable again" in text
        assert "pipeline stopped" not in text


def test_stats_say_why_the_broker_is_not_reachable(
    tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, None))
    with caplog.at_level(logging.INFO), RunningAgent(cfg) as agent:
        assert _wait(lambda: agent.publisher.health()["failed_attempts"] >= 2, 10)
        body = agent.stats_body()
        Draft202012Validator(closed_schema(load_schema("stats"))).validate(body)
        mqtt = body["mqtt"]
        assert mqtt["connected"] is False and mqtt["failed_attempts"] >= 2
        assert "127.0.0.1:1 (connection refused)" in mqtt["last_error"]
        assert mqtt["since"] is not None
        assert "mqtt not connected" in agent.status_line()
    assert "mqtt: cannot reach 127.0.0.1:1 (connection refused)" in caplog.text
