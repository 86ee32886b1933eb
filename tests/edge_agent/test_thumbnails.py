"""mqtt.thumbnails: a small JPEG per classification, on thumbnails/<id>, through the outbox."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_testkit import RunningAgent, agent_config, galaxy_like, write_config, write_png
from mqtt_broker import Collector, MosquittoBroker

from edge_agent.payloads import PayloadError, thumbnail_topic
from edge_agent.thumbnails import ThumbnailError, thumbnail_jpeg

T = "galaxy-edge/dev1/"


def test_a_thumbnail_keeps_the_aspect_and_the_colours() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, :, 0] = 200  # red
    jpeg = thumbnail_jpeg(rgb, size=64, quality=90)
    back = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == (32, 64, 3)
    assert abs(int(back[..., 2].mean()) - 200) < 5 and back[..., 0].mean() < 5  # BGR on disk
    small = thumbnail_jpeg(np.zeros((20, 10, 3), np.uint8), size=64, quality=80)
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape == (20, 10, 3)
    with pytest.raises(ThumbnailError):
        thumbnail_jpeg(np.zeros((8, 8), np.uint8), size=64, quality=80)


def test_the_topic_carries_the_classification_id() -> None:
    assert thumbnail_topic("galaxy-edge", "dev1", "ab" * 16) == f"{T}thumbnails/{'ab' * 16}"
    with pytest.raises(PayloadError):
        thumbnail_topic("galaxy-edge", "dev1", "a/b")


@pytest.mark.mqtt
def test_the_agent_publishes_one_thumbnail_per_classification(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    raw = agent_config(
        tmp_path, tiny_bundle, mosquitto, mqtt={"thumbnails": {"enabled": True, "size": 48}}
    )
    cfg = write_config(tmp_path / "agent.yaml", raw)
    for i in range(3):
        write_png(tmp_path / "inbox" / f"g{i}.png", galaxy_like(i, 60, 90))
    collector = Collector(mosquitto, "galaxy-edge/#")
    try:
        with RunningAgent(cfg):

            def arrived(_: object) -> bool:
                thumbs = [m for m in collector.messages if "/thumbnails/" in m.topic]
                return len(collector.on(T + "classifications")) >= 3 and len(thumbs) >= 3

            assert collector.wait_for(arrived, 20)
        ids = {json.loads(m.payload)["id"] for m in collector.on(T + "classifications")}
        thumbs = {
            m.topic.rsplit("/", 1)[1]: m for m in collector.messages if "/thumbnails/" in m.topic
        }
        assert set(thumbs) == ids
        for m in thumbs.values():
            assert m.qos == 1 and not m.retain
            img = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR)
            assert img.shape == (32, 48, 3)  # 60 x 90 scaled to a longer side of 48
    finally:
        collector.close()
