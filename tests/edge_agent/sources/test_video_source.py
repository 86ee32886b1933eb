from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.sources.base import FrameHub
from edge_agent.sources.video import VideoSource


def write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi")
    for i in range(n):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[:, :, 2] = 200  # red in BGR
        bgr[:, :, 1] = 10 * i
        writer.write(bgr)
    writer.release()


def test_video_file_frames_in_order_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 5)
    hub = FrameHub()
    source = VideoSource("clip", hub.queue("clip", 10, "block"), f"file://{path}")
    source.start()
    assert source.finished.wait(5)
    frames = [hub.get(0) for _ in range(5)]
    assert hub.get(0) is None
    assert [f.frame_ref for f in frames if f] == [f"file://{path}#{i}" for i in range(5)]
    image = frames[0].image  # type: ignore[union-attr]
    assert image is not None and image.shape == (48, 64, 3)
    assert image[:, :, 0].mean() > 150 and image[:, :, 2].mean() < 50  # red stays red in RGB


def test_live_policy_drops_oldest_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 12)
    hub = FrameHub()
    queue = hub.queue("cam", 3, "drop_oldest")
    source = VideoSource("cam", queue, f"file://{path}")
    source.start()
    assert source.finished.wait(5)
    assert len(queue) == 3 and queue.dropped == 9 and hub.dropped() == {"cam": 9}
    assert [hub.get(0).frame_ref.rsplit("#", 1)[1] for _ in range(3)] == ["9", "10", "11"]  # type: ignore[union-attr]
