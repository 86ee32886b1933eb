"""Frame sources created from URIs (``dir://``, ``v4l2://``, ``csi://``, ``rtsp://``, ``file://``,
``mqtt://``); see :func:`edge_agent.sources.factory.create_source`."""

from edge_agent.sources.base import Frame, FrameHub, FrameQueue, Source, SourceError
from edge_agent.sources.factory import create_source

__all__ = ["Frame", "FrameHub", "FrameQueue", "Source", "SourceError", "create_source"]
