from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, SourceConfig
from edge_agent.ledger import Ledger
from edge_agent.sources.base import FrameHub, SourceError
from edge_agent.sources.directory import DirectorySource
from edge_agent.sources.factory import create_source
from edge_agent.sources.mqtt_frames import MqttFrameSource
from edge_agent.sources.video import VideoSource, csi_pipeline


def make(uri: str, tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return create_source(
        SourceConfig(uri=uri, **kw),
        FrameHub(),
        ledger=Ledger(tmp_path / "l.db"),
        mqtt=MqttConfig(),
        device_id="dev1",
    )


def test_unknown_scheme_one_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        make("ftp://host/x", tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "unknown source scheme 'ftp'" in msg and "dir://" in msg


def test_kinds_and_policies(tmp_path: Path) -> None:
    d = make(f"dir://{tmp_path}", tmp_path)
    assert isinstance(d, DirectorySource) and d.queue.policy == "block"
    cam = make("v4l2:///dev/video9", tmp_path)
    assert isinstance(cam, VideoSource) and cam.queue.policy == "drop_oldest"
    assert make("file:///tmp/x.mp4", tmp_path).queue.policy == "block"
    m = make("mqtt://127.0.0.1:1884/receivers", tmp_path)
    assert isinstance(m, MqttFrameSource)
    assert m.topic == "receivers/dev1/frames" and m.port == 1884
    same_broker = make("mqtt://", tmp_path)  # the broker of the mqtt section, default prefix
    assert (same_broker.host, same_broker.port) == ("localhost", 1883)  # type: ignore[attr-defined]
    assert same_broker.topic == "galaxy-edge/dev1/frames"  # type: ignore[attr-defined]


def test_relative_dir_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="absolute path"):
        make("dir://relative/path", tmp_path)


def test_missing_camera_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        make("file:///nonexistent/video.mp4", tmp_path).start()


def test_csi_pipeline_string() -> None:
    p = csi_pipeline("csi://1?width=1280&height=720&fps=60")
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=1280, height=720, framerate=60/1" in p and p.endswith(
        "appsink drop=true max-buffers=1 sync=false"
    )
    with pytest.raises(SourceError):
        csi_pipeline("csi://front")
