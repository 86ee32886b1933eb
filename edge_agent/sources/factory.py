"""One function turns a source's URI into a running-ready :class:`Source`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge_agent.config import MqttConfig, SourceConfig
from edge_agent.ledger import Ledger
from edge_agent.sources.base import FrameHub, Source, SourceError

SCHEMES = ("dir", "indi", "v4l2", "csi", "rtsp", "rtsps", "file", "mqtt", "mqtts")


def dir_path(uri: str) -> Path:
    """The folder of a ``dir:///abs/path`` URI (three slashes: no host part)."""
    parts = urlsplit(uri)
    path = Path(unquote(parts.path))
    if parts.netloc or not path.is_absolute():
        raise SourceError(
            f"{uri}: dir source needs an absolute path after three slashes, e.g. dir:///srv/frames"
        )
    return path


def create_source(
    config: SourceConfig,
    hub: FrameHub,
    *,
    ledger: Ledger,
    mqtt: MqttConfig,
    device_id: str,
    max_bytes: int = 64 * 1024 * 1024,
) -> Source:
    """A source for ``config.uri`` with its own queue in ``hub``; raises :class:`SourceError`."""
    scheme = config.scheme
    if scheme not in SCHEMES:
        raise SourceError(
            f"{config.uri}: unknown source scheme {scheme or '(none)'!r}; "
            "use dir://, indi://, v4l2://, csi://, rtsp://, file:// or mqtt://"
        )
    name = config.display_name
    formats = tuple(config.formats)
    if scheme == "dir":
        path = dir_path(config.uri)
        queue = hub.queue(name, config.queue_size, config.policy)
        from edge_agent.sources.directory import DirectorySource

        return DirectorySource(name, queue, formats, path, ledger)
    if scheme == "indi":
        queue = hub.queue(name, config.queue_size, config.policy)
        from edge_agent.config import IndiSourceConfig
        from edge_agent.sources.indi import IndiSource

        return IndiSource(
            name, queue, formats, config.uri, config.indi or IndiSourceConfig(),
            max_bytes=max_bytes,
        )  # fmt: skip
    if scheme in ("mqtt", "mqtts"):
        queue = hub.queue(name, config.queue_size, config.policy)
        from edge_agent.sources.mqtt_frames import MqttFrameSource

        return MqttFrameSource(name, queue, formats, config.uri, mqtt, device_id)
    queue = hub.queue(name, config.queue_size, config.policy)
    from edge_agent.sources.video import VideoSource

    return VideoSource(name, queue, config.uri)
