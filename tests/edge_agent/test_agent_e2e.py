"""End to end through a real Mosquitto: folder in, MQTT out, with the exact payloads."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from agent_testkit import (
    RunningAgent,
    agent_config,
    drop_file,
    expected_probabilities,
    galaxy_like,
    make_bundle,
    preload_inbox,
    write_config,
    write_png,
)
from mqtt_broker import Collector, MosquittoBroker

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.manifest import sha256_file

pytestmark = pytest.mark.mqtt
T = "galaxy-edge/dev1/"


def classifications(c: Collector) -> list[dict]:
    return [json.loads(m.payload) for m in c.on(T + "classifications")]


def wait_refs(c: Collector, paths: list[Path], timeout: float = 20.0) -> dict[str, dict]:
    want = {str(p) for p in paths}

    def have(_: object) -> bool:
        return want <= {m["frame_ref"].rsplit("@", 1)[0] for m in classifications(c)}

    assert c.wait_for(have, timeout), (
        f"missing: {want - {m['frame_ref'].rsplit('@', 1)[0] for m in classifications(c)}}"
    )
    return {m["frame_ref"].rsplit("@", 1)[0]: m for m in classifications(c)}


def test_folder_to_mqtt_exact_payloads(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    inbox = tmp_path / "inbox"
    images = {f"g{i}.png": galaxy_like(i, 40 + 7 * i, 90 - 5 * i) for i in range(6)}
    write_png(inbox / "g0.png", images["g0.png"])  # there before the start: found by the rescan
    collector = Collector(mosquitto)
    try:
        with RunningAgent(cfg):
            for name, rgb in list(images.items())[1:]:
                _ok, data = cv2.imencode(".png", rgb[:, :, ::-1])
                drop_file(inbox, name, data.tobytes())
            got = wait_refs(collector, [inbox / n for n in images])

            def stats_done(_: object) -> bool:
                bodies = [json.loads(m.payload) for m in collector.on(T + "stats")]
                return any(b["frames"]["out"] == 6 for b in bodies)

            assert collector.wait_for(stats_done, 5)
        stats = [json.loads(m.payload) for m in collector.on(T + "stats")][-1]
        assert stats["frames"] == {"in": 6, "out": 6, "errors": 0}
        assert stats["frames_dropped"] == {"inbox": 0} and stats["queue_depth"] == 0
        assert set(stats["latency_ms"]) <= {"decode", "queue", "preprocess", "infer", "total"}
        assert all(set(p) == {"p50", "p99", "max"} for p in stats["latency_ms"].values())
        assert stats["interval_s"] <= min(5.0, stats["uptime_s"])
        assert collector.on(T + "stats")[-1].qos == 0
        status = [json.loads(m.payload) for m in collector.on(T + "status")]
    finally:
        collector.close()

    model_sha = sha256_file(tiny_bundle / "model.onnx")
    for name, rgb in images.items():
        msg = got[str(inbox / name)]
        probs = expected_probabilities(rgb, tiny_bundle)
        best = int(np.argmax(probs))
        assert msg["class_id"] == best and msg["label"] == CLASS_NAMES[best]
        np.testing.assert_allclose(msg["probabilities"], probs, atol=2e-6)  # class-id order
        assert msg["confidence"] == pytest.approx(probs[best], abs=2e-6)
        assert msg["uncertain"] == (probs[best] < 0.5)
        ref = f"dev1|inbox|{msg['frame_ref']}|{model_sha}"
        assert msg["id"] == hashlib.sha256(ref.encode()).hexdigest()[:32]
        assert msg["model"] == {"name": "tiny-test", "sha256": model_sha, "precision": "fp32"}
        assert set(msg["latency_ms"]) == {"decode", "queue", "preprocess", "infer", "total"}
        assert msg["latency_ms"]["total"] >= msg["latency_ms"]["infer"]
    assert status[0]["state"] == "online" and status[0]["model"]["sha256"] == model_sha
    assert status[-1]["state"] == "offline"  # clean stop


def test_bad_files_quarantined_good_keep_flowing(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    inbox = tmp_path / "inbox"
    _ok, png = cv2.imencode(".png", galaxy_like(1))
    collector = Collector(mosquitto)
    try:
        with RunningAgent(cfg) as agent:
            drop_file(inbox, "good1.png", png.tobytes())
            drop_file(inbox, "cut.png", png.tobytes()[:-40])
            drop_file(inbox, "text.png", b"hello, I am not an image\n")
            drop_file(inbox, "good2.png", png.tobytes())
            wait_refs(collector, [inbox / "good1.png", inbox / "good2.png"])
            assert collector.wait_for(lambda _: len(collector.on(T + "errors")) >= 2, 10)
            assert agent.pipeline.alive()
            drop_file(inbox, "good3.png", png.tobytes())
            wait_refs(collector, [inbox / "good3.png"])
    finally:
        collector.close()
    errors = {
        json.loads(m.payload)["frame_ref"].rsplit("@", 1)[0]: json.loads(m.payload)
        for m in collector.on(T + "errors")
    }
    assert errors[str(inbox / "cut.png")]["reason"] == "truncated"
    assert errors[str(inbox / "text.png")]["reason"] == "wrong_type"
    for name in ("cut.png", "text.png"):
        where = Path(errors[str(inbox / name)]["quarantined_to"])
        assert where.is_file() and where.is_relative_to(tmp_path / "quarantine")
        reason = json.loads(where.with_name(where.name + ".reason.json").read_text())
        assert reason["original"] == str(inbox / name)
        assert not (inbox / name).exists()


def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, tiny_bundle: Path, persistent_broker: MosquittoBroker
) -> None:
    broker = persistent_broker
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, broker))
    inbox = tmp_path / "inbox"
    collector = Collector(broker, persistent_session=True, client_id="consumer-1")
    paths = []
    try:
        with RunningAgent(cfg) as agent:
            for i in range(30):
                _ok, png = cv2.imencode(".png", galaxy_like(i, 32, 32))
                paths.append(drop_file(inbox, f"f{i:02}.png", png.tobytes()))
                if i == 10:
                    broker.stop()
                if i == 20:
                    assert not agent.publisher.connected
                    broker.start()
                time.sleep(0.02)
            got = wait_refs(collector, paths, timeout=30)
    finally:
        collector.close()
    assert len(got) == 30


def test_mqtt_frames_source(tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    raw = agent_config(tmp_path, tiny_bundle, mosquitto)
    raw["sources"] = [{"uri": f"mqtt://{mosquitto.host}:{mosquitto.port}", "name": "receiver"}]
    cfg = write_config(tmp_path / "agent.yaml", raw)
    rgb = galaxy_like(3)
    _ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    collector = Collector(mosquitto)
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    try:
        with RunningAgent(cfg) as agent:
            source = agent.sources["receiver"][1]
            assert source.connected.wait(5)
            time.sleep(0.2)  # SUBACK before publishing
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("frame_ref", "rx-42"), ("antenna", "west")]
            sender.publish(T + "frames", png.tobytes(), qos=1, properties=props).wait_for_publish(5)
            sender.publish(T + "frames", b"garbage", qos=1).wait_for_publish(5)
            assert collector.wait_for(
                lambda _: (
                    len(classifications(collector)) >= 1 and len(collector.on(T + "errors")) >= 1
                ),
                10,
            )
    finally:
        sender.loop_stop()
        collector.close()
    (msg,) = classifications(collector)
    assert msg["frame_ref"] == "rx-42" and msg["metadata"] == {"antenna": "west"}
    np.testing.assert_allclose(
        msg["probabilities"], expected_probabilities(rgb, tiny_bundle), atol=2e-6
    )
    err = json.loads(collector.on(T + "errors")[0].payload)
    assert err["reason"] == "wrong_type" and Path(err["quarantined_to"]).read_bytes() == b"garbage"


def test_sighup_reload_swaps_bundle_keeps_queued(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    second = tmp_path / "bundle2"
    make_bundle(second, seed=1, name="tiny-v2")
    raw = agent_config(
        tmp_path, tiny_bundle, mosquitto, pipeline={"max_batch": 1, "max_wait_ms": 0}
    )
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    paths = preload_inbox(inbox, 40, 300)
    collector = Collector(mosquitto)
    try:
        with RunningAgent(cfg) as agent:
            assert collector.wait_for(lambda _: len(classifications(collector)) >= 3, 10)
            raw["bundle"] = str(second)
            write_config(tmp_path / "agent.yaml", raw)
            agent.request_reload()
            got = wait_refs(collector, paths, timeout=30)
    finally:
        collector.close()
    names = [m["model"]["name"] for m in classifications(collector)]
    assert names[0] == "tiny-test" and names[-1] == "tiny-v2"
    assert len(got) == 40


def test_reload_with_bad_config_keeps_running(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    raw = agent_config(tmp_path, tiny_bundle, mosquitto)
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    collector = Collector(mosquitto)
    try:
        with RunningAgent(cfg) as agent:
            (tmp_path / "agent.yaml").write_text("device_id: [oops\n")
            assert agent.reload() is False
            raw["device_id"] = "other"
            write_config(tmp_path / "agent.yaml", raw)
            assert agent.reload() is False  # durable identity: needs a restart
            _ok, png = cv2.imencode(".png", galaxy_like(5))
            drop_file(inbox, "after.png", png.tobytes())
            wait_refs(collector, [inbox / "after.png"])
            assert agent.config.device_id == "dev1"
    finally:
        collector.close()


def test_stop_drains_queue_and_flushes_outbox(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    raw = agent_config(
        tmp_path,
        tiny_bundle,
        mosquitto,
        pipeline={"max_batch": 2, "max_wait_ms": 0},
        drain_timeout_s=20,
    )
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    paths = preload_inbox(inbox, 20, 400)
    collector = Collector(mosquitto)
    try:
        runner = RunningAgent(cfg)
        agent = runner.__enter__()
        deadline = time.monotonic() + 10
        while agent.hub.depth() < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(classifications(collector)) < 20  # stopping with work queued
        runner.__exit__(None, None, None)
        assert runner.exit_code == 0
        # Everything queued at the stop was classified and published before the exit.
        got = wait_refs(collector, paths, timeout=1)
    finally:
        collector.close()
    assert len(got) == 20


def test_failed_start_releases_everything(tmp_path: Path, tiny_bundle: Path) -> None:
    from edge_agent.agent import Agent
    from edge_agent.config import parse_config
    from edge_agent.sources.base import SourceError

    raw = agent_config(tmp_path, tiny_bundle, None)
    raw["sources"].append({"uri": f"dir://{tmp_path}/missing", "name": "missing"})
    with pytest.raises(SourceError, match="is not a folder"):
        Agent(parse_config(yaml.safe_dump(raw))).start()
    raw["sources"].pop()
    agent = Agent(parse_config(yaml.safe_dump(raw)))
    agent.start()  # the outbox's file lock was released by the failed start
    agent.request_stop()
    assert agent.run() == 0


def test_mqtt_frames_sent_while_agent_down_are_kept(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    import paho.mqtt.client as mqtt

    raw = agent_config(tmp_path, tiny_bundle, mosquitto)
    raw["sources"] = [{"uri": "mqtt://", "name": "receiver"}]  # the broker of the mqtt section
    cfg = write_config(tmp_path / "agent.yaml", raw)
    collector = Collector(mosquitto)
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    try:
        with RunningAgent(cfg) as agent:  # first start: creates the persistent session
            assert agent.sources["receiver"][1].connected.wait(5)
            time.sleep(0.2)
        for i in range(3):  # the agent is down: the broker keeps these for its session
            _ok, png = cv2.imencode(".png", galaxy_like(i))
            sender.publish(T + "frames", png.tobytes(), qos=1).wait_for_publish(5)
        with RunningAgent(cfg):
            assert collector.wait_for(lambda _: len(classifications(collector)) >= 3, 10)
    finally:
        sender.loop_stop()
        collector.close()
    assert len({m["frame_ref"] for m in classifications(collector)}) == 3
