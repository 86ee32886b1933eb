"""Cameras and video through OpenCV: ``v4l2://``, ``csi://`` (GStreamer), ``rtsp://``, ``file://``.

Live sources (cameras, RTSP) are read as fast as they deliver, into a ``drop_oldest`` queue by
default, so the model always sees the newest scene and every dropped frame is counted. A lost
live stream is reopened with a growing delay; a video file ends at its last frame.
OpenCV returns BGR: frames are turned into RGB here, once.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

import cv2

from edge_agent.sources.base import Frame, FrameQueue, Source, SourceError

log = logging.getLogger(__name__)


def csi_pipeline(uri: str) -> str:
    """GStreamer pipeline for ``csi://<sensor>?width=&height=&fps=`` (Jetson Argus camera).

    ``nvarguscamerasrc`` gives NVMM buffers; ``nvvidconv`` copies them to system memory as BGRx
    and ``videoconvert`` to BGR for OpenCV's appsink, which keeps only the newest buffer.
    """
    parts = urlsplit(uri)
    sensor = parts.netloc or parts.path.strip("/") or "0"
    if not sensor.isdigit():
        raise SourceError(f"{uri}: csi sensor id must be a number, e.g. csi://0")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    width, height, fps = (
        int(q.get("width", 1920)),
        int(q.get("height", 1080)),
        int(q.get("fps", 30)),
    )
    flip = int(q.get("flip", 0))
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def open_capture(uri: str) -> tuple[cv2.VideoCapture, bool]:
    """The OpenCV capture for ``uri`` and whether it is live."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "csi":
        return cv2.VideoCapture(csi_pipeline(uri), cv2.CAP_GSTREAMER), True
    if scheme == "v4l2":
        device = urlsplit(uri).path or "/dev/video0"
        return cv2.VideoCapture(device, cv2.CAP_V4L2), True
    if scheme in ("rtsp", "rtsps"):
        return cv2.VideoCapture(uri, cv2.CAP_FFMPEG), True
    if scheme == "file":
        return cv2.VideoCapture(urlsplit(uri).path), False
    raise SourceError(f"{uri}: not a video uri")


class VideoSource(Source):
    kind = "video"

    def __init__(self, name: str, queue: FrameQueue, uri: str) -> None:
        super().__init__(name, queue, ())
        self.uri = uri
        self._thread: threading.Thread | None = None
        self.frames_read = 0
        self.finished = threading.Event()

    def start(self) -> None:
        capture, live = open_capture(self.uri)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"{self.name}: OpenCV cannot open {self.uri}; check the device or url"
            )
        self._thread = threading.Thread(
            target=self._run, args=(capture, live), name=f"video-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(self, capture: cv2.VideoCapture, live: bool) -> None:
        delay = 0.5
        started = time.time_ns()
        try:
            while not self.stopping.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    if not live:
                        log.info(
                            "%s: end of %s after %d frames", self.name, self.uri, self.frames_read
                        )
                        return
                    log.warning("%s: stream lost, reopening in %.1f s", self.name, delay)
                    capture.release()
                    if self.stopping.wait(delay):
                        return
                    delay = min(delay * 2, 30.0)
                    capture, live = open_capture(self.uri)
                    continue
                delay = 0.5
                seq = self.frames_read
                self.frames_read += 1
                rgb = (
                    cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                    if image.ndim == 3
                    else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
                )
                ref = f"{self.uri}#{seq}" if not live else f"{self.name}@{started}#{seq}"
                frame = Frame(source=self.name, frame_ref=ref, image=rgb)
                while not self.queue.put(frame, timeout=0.5):
                    if self.stopping.is_set() or self.queue.closed:
                        return
        finally:
            capture.release()
            self.finished.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
