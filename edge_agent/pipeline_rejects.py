"""Bad inputs and lost sources: the quarantine, the ``errors`` message, and the log line.

A bad input is moved to the quarantine (or left in place, when it cannot be moved) and
reported with an ``errors`` message; the pipeline goes on. A source that lost its server or
device is reported the same way, with nothing to quarantine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent import payloads
from edge_agent.outbox import Outbox, PendingMessage
from edge_agent.outbox_writer import OutboxWriter
from edge_agent.quarantine import Quarantine, QuarantineError
from edge_agent.sources.base import Frame
from edge_agent.stats import Stats

# The pipeline's messages keep the logger name they always had.
log = logging.getLogger("edge_agent.pipeline")

# Rejection reasons of the pipeline itself (the decoder's are in edge_agent.contract.decode).
POISON = "poison"  # the agent died while processing this input, poison_after_attempts times
DECODE_FAILED = "decode_failed"  # decoding raised something unforeseen (a decoder bug)


def unquarantined_error(
    device_id: str, source: str, frame_ref: str, reason: str, detail: str
) -> dict[str, Any]:
    """An ``errors`` payload, stamped now, for an input that was not quarantined."""
    return payloads.error_payload(
        device_id=device_id,
        source=source,
        frame_ref=frame_ref,
        reason=reason,
        detail=detail,
        quarantined_to=None,
        at=time.time(),
    )


class Rejections:
    """The :class:`~edge_agent.pipeline.Pipeline`'s rejections and source problems.

    A mixin: these methods share the pipeline's state (declared below).
    """

    stats: Stats
    quarantine: Quarantine
    outbox: Outbox
    outbox_writer: OutboxWriter
    on_stored: Callable[[], None]
    device_id: str
    topic_errors: str
    qos: int
    _stop_prepare: threading.Event

    def reject(self, frame: Frame, reason: str, detail: str, *, movable: bool = True) -> None:
        """Quarantine a bad input, publish an ``errors`` message, then let the source forget it.

        An input that cannot be quarantined (the quarantine's file system is full, or it is a
        folder, which is never moved) stays where it was: the ``errors`` message and the log
        say so, and the source marks it so that it is not retried until it changes
        (:meth:`Frame.left_in_place`).
        """
        self.stats.error()
        where: str | None = None
        left: str | None = None
        try:
            if frame.path is not None and not movable:
                left = "a folder is never moved into the quarantine"
            elif frame.path is not None:
                where = str(
                    self.quarantine.put_file(
                        frame.path, source=frame.source, reason=reason, message=detail
                    )
                )
            elif frame.data is not None:
                name = frame.metadata.get("name") or frame.frame_ref.rsplit("/", 1)[-1]
                where = str(
                    self.quarantine.put_bytes(
                        frame.data,
                        name=name,
                        source=frame.source,
                        reason=reason,
                        message=detail,
                        extra={"frame_ref": frame.frame_ref, "metadata": frame.metadata},
                    )
                )
        except QuarantineError as exc:
            log.error("%s", exc)
            left = f"not quarantined: {exc.cause}"
        if left is not None:
            if frame.path is not None:
                detail = f"{detail}; left in place ({left}); change or re-copy it to retry"
            else:
                detail = f"{detail}; {left}"
        log.warning(
            "%s: %s rejected (%s): %s%s",
            frame.source,
            frame.frame_ref,
            reason,
            detail,
            "" if where is None else f" -> {where}",
        )
        body = payloads.error_payload(
            device_id=self.device_id,
            source=frame.source,
            frame_ref=frame.frame_ref,
            reason=reason,
            detail=detail,
            quarantined_to=where,
            at=time.time(),
        )
        message = PendingMessage(self.topic_errors, payloads.to_bytes(body), self.qos, body["id"])
        if not self.outbox_writer.put_many([message], self._stop_prepare):
            return  # stopped while the disk was full: not done, so retried at the next start
        self.on_stored()
        if left is None:
            frame.done()
        else:
            frame.left_in_place()  # a file: marked, not retried; MQTT bytes: un-acked, redelivered

    def report_source_problem(self, source: str, ref: str, reason: str, detail: str) -> None:
        """A source lost its server or device: an ``errors`` message (nothing to quarantine).

        Called from the source's thread; the outbox serialises writers. ``ref`` is the source's
        URI, so consumers see which camera it is.
        """
        body = unquarantined_error(self.device_id, source, ref, reason, detail)
        try:
            self.outbox.put(self.topic_errors, payloads.to_bytes(body), self.qos, msg_id=body["id"])
        except Exception:  # a full disk must not take the camera's thread down with it
            log.exception("%s: cannot store the errors message for %s", source, reason)
            return
        self.on_stored()
