"""``indi://host:port/<device>``: each exposure of an INDI camera, as the FITS it delivers.

On Linux observatories cameras are driven through INDI (``indiserver`` and its drivers; KStars/Ekos
and other acquisition software are INDI clients). This source is one more client: it asks the
server for the device's properties, enables its BLOBs and takes every BLOB the camera sends (FITS,
``.fits.fz`` tile-compressed FITS, or zlib-compressed ``.fits.z``) as a frame. Two modes:

- *listen* (default): other software drives the camera; every exposure it takes is classified.
- *drive* (``indi.exposure_s`` set): this source connects the camera if needed and starts an
  exposure, then the next one ``indi.interval_s`` after each image arrives, but only when the
  agent's queue has room for it (a camera is never asked for frames that would be dropped).

A lost server or camera is never fatal: the source reconnects with a growing delay, reports the
problem (log, ``errors`` through the agent's problem callback, and :meth:`health` in ``stats``)
and carries on when the camera is back.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from urllib.parse import unquote, urlsplit

from edge_agent.config import IndiSourceConfig
from edge_agent.sources.base import Frame, FrameQueue, Source, SourceError
from edge_agent.sources.indi_protocol import (
    IndiConnection,
    IndiElement,
    enable_blob,
    get_properties,
    new_vector,
)

log = logging.getLogger(__name__)
DEFAULT_PORT = 7624
_BACKOFF_MAX_S = 30.0
_EXPOSURE_GRACE_S = 30.0  # beyond exposure_s, how long to wait for the image before retrying


def parse_indi_uri(uri: str) -> tuple[str, int, str]:
    """``(host, port, device)`` of ``indi://host[:port]/<device>`` (device names may be quoted)."""
    parts = urlsplit(uri)
    device = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not device:
        raise SourceError(
            f"{uri}: an INDI source needs a host and a device, "
            "e.g. indi://localhost:7624/CCD%20Simulator"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise SourceError(f"{uri}: bad port ({exc})") from exc
    return parts.hostname, port, device


def unpack_blob(data: bytes, fmt: str, max_bytes: int) -> bytes:
    """The FITS bytes of a BLOB of format ``fmt`` (``.fits``, ``.fits.fz``, ``.fits.z``...).

    ``.z`` is INDI's zlib compression of the whole file: inflated here, never past ``max_bytes``.
    Anything else is passed on as it is: the decoder identifies it by its magic bytes.
    """
    if not fmt.lower().endswith(".z"):
        return data
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise SourceError(f"compressed BLOB ({fmt}) does not inflate: {exc}") from exc
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise SourceError(f"compressed BLOB ({fmt}) inflates past {max_bytes} bytes")
    return out


class IndiSource(Source):
    kind = "indi"

    def __init__(
        self,
        name: str,
        queue: FrameQueue,
        formats: tuple[str, ...],
        uri: str,
        settings: IndiSourceConfig,
        *,
        max_bytes: int,
    ) -> None:
        super().__init__(name, queue, formats)
        self.uri = uri
        self.host, self.port, self.device = parse_indi_uri(uri)
        self.settings = settings
        self.max_bytes = max_bytes
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conn: IndiConnection | None = None
        self.connected = threading.Event()  # to the server
        self.camera_online = False
        self.frames = 0
        self.last_error: str | None = None
        self.problem_since: float | None = None
        self.reconnects = 0
        # drive mode: the camera's state as the server last said it
        self._props: dict[str, IndiElement] = {}
        self._exposing_since: float | None = None
        self._next_exposure = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"indi-{self.name}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Take no new exposures; an image already on its way is still queued if it arrives."""
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def health(self) -> dict[str, object] | None:
        """What ``stats`` reports about this camera."""
        return {
            "connected": self.connected.is_set(),
            "camera_online": self.camera_online,
            "frames": self.frames,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "problem_since": self.problem_since,
        }

    def describe(self) -> str:
        mode = (
            f"drives exposures of {self.settings.exposure_s} s"
            if self.settings.exposure_s is not None
            else "listens"
        )
        return f"indi source {self.name!r} ({self.device} at {self.host}:{self.port}, {mode})"

    # --- the connection loop ----------------------------------------------------------------

    def _problem(self, reason: str, detail: str) -> None:
        first = self.last_error != detail
        self.last_error = detail
        if self.problem_since is None:
            self.problem_since = time.time()
        if first:  # one log line and one errors message per distinct problem, not per retry
            log.warning("%s: %s", self.name, detail)
            try:
                self.on_problem(reason, detail)
            except Exception:
                log.exception("%s: problem callback failed", self.name)

    def _recovered(self) -> None:
        if self.problem_since is not None:
            log.info("%s: %s is back", self.name, self.device)
        self.last_error = None
        self.problem_since = None

    def _run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                conn = IndiConnection(
                    self.host, self.port, self._on_element, max_blob_bytes=self.max_bytes
                )
            except SourceError as exc:
                self._problem("source_unavailable", str(exc))
                if self.stopping.wait(delay):
                    return
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            with self._lock:
                if self.stopping.is_set():
                    conn.close()
                    return
                self._conn = conn
            self.connected.set()
            delay = 0.5
            try:
                self._session(conn)
            except SourceError as exc:
                if not self.stopping.is_set():
                    self._problem("source_unavailable", f"{self.device}: {exc}")
            finally:
                self.connected.clear()
                self.camera_online = False
                self._props.clear()
                self._exposing_since = None
                with self._lock:
                    self._conn = None
                conn.close()
            if not self.stopping.is_set():
                self.reconnects += 1
                if self.stopping.wait(delay):
                    return

    def _session(self, conn: IndiConnection) -> None:
        conn.send(get_properties(self.device))
        conn.send(enable_blob(self.device, "Also"))
        while not self.stopping.is_set():
            if not conn.pump(0.25):
                raise SourceError(f"the INDI server at {self.host}:{self.port} closed the stream")
            if self.settings.exposure_s is not None:
                self._drive(conn)

    # --- what the server says -----------------------------------------------------------

    def _on_element(self, element: IndiElement) -> None:
        if element.device != self.device:
            return
        tag = element.tag
        if tag.startswith("def") or tag.startswith("set"):
            known = self._props.get(element.name)
            if known is not None and tag.startswith("set"):
                merged = {m.attrs.get("name"): m for m in known.members}
                for member in element.members:
                    merged[member.attrs.get("name")] = member
                known.members = list(merged.values())
                known.attrs.update(element.attrs)
            elif tag.startswith("def"):
                self._props[element.name] = element
        if element.name == "CONNECTION" and element.name in self._props:
            online = self._props["CONNECTION"].values().get("CONNECT") == "On"
            if online and not self.camera_online:
                self._recovered()
            elif not online and self.camera_online:
                self._problem("source_unavailable", f"{self.device}: the camera disconnected")
            self.camera_online = online
        elif tag == "delProperty" and not element.name:
            self.camera_online = False
            self._props.clear()
            self._problem("source_unavailable", f"{self.device}: the driver went away")
        elif tag == "setBLOBVector":
            self._on_blob(element)
        elif element.name == "CCD_EXPOSURE" and element.attrs.get("state") == "Alert":
            self._exposing_since = None
            self._problem("source_error", f"{self.device}: the exposure failed (state Alert)")

    def _on_blob(self, element: IndiElement) -> None:
        if self.settings.blob is not None and element.name != self.settings.blob:
            return
        for member in element.members:
            if member.tag != "oneBLOB":
                continue
            fmt = member.attrs.get("format", "")
            if member.blob is None:
                self._problem(
                    "oversized" if member.skipped and "cap" in member.skipped else "source_error",
                    f"{self.device}: an image was not taken ({member.skipped})",
                )
                continue
            if not member.blob:
                continue  # an empty BLOB: a driver announcing nothing
            try:
                data = unpack_blob(member.blob, fmt, self.max_bytes)
            except SourceError as exc:
                self._problem("corrupt", f"{self.device}: {exc}")
                continue
            stamp = element.attrs.get("timestamp") or time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime()
            )
            seq = self.frames
            self.frames += 1
            self._exposing_since = None
            self._next_exposure = time.monotonic() + self.settings.interval_s
            self._recovered()
            frame = Frame(
                source=self.name,
                frame_ref=f"{self.uri}#{element.name}@{stamp}#{seq}",
                data=data,
                formats=self.formats,
                metadata={"indi_device": self.device, "indi_blob": element.name, "format": fmt},
            )
            # block: an exposure is never dropped; the server buffers while we wait (and the
            # drive mode starts no new exposure until there is room).
            while not self.queue.put(frame, timeout=1.0):
                if self.stopping.is_set() or self.queue.closed:
                    return

    # --- drive mode -------------------------------------------------------------------

    def _drive(self, conn: IndiConnection) -> None:
        now = time.monotonic()
        connection = self._props.get("CONNECTION")
        if connection is None:
            return
        if not self.camera_online:
            if connection.attrs.get("state") != "Busy":
                conn.send(new_vector("Switch", self.device, "CONNECTION", [("CONNECT", "On")]))
                connection.attrs["state"] = "Busy"
            return
        if "CCD_EXPOSURE" not in self._props:
            return
        exposure = self.settings.exposure_s
        assert exposure is not None
        if self._exposing_since is not None:
            if now - self._exposing_since < exposure + _EXPOSURE_GRACE_S:
                return
            self._problem(
                "source_error",
                f"{self.device}: no image {exposure + _EXPOSURE_GRACE_S:.0f} s after an "
                f"exposure of {exposure} s; starting another",
            )
        if now < self._next_exposure or len(self.queue) >= self.queue.maxsize:
            return
        conn.send(
            new_vector(
                "Number", self.device, "CCD_EXPOSURE", [("CCD_EXPOSURE_VALUE", f"{exposure:g}")]
            )
        )
        self._exposing_since = now
