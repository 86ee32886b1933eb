"""Topics the broker refuses (MQTT 5 PUBACK >= 0x80): kept, backed off, logged rate-limited.

A refused message is NOT delivered: it stays in the outbox, out of the in-flight window, and is
offered again after ``reject_retry_s``; meanwhile its topic is backed off, so the window goes
to topics the broker accepts. The log says so at once, then at most every
:data:`REFUSAL_LOG_EVERY_S` with the count.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox

# The publisher's messages keep the logger name they always had (docs/reliability.md quotes it).
log = logging.getLogger("edge_agent.mqtt_client")

REFUSAL_LOG_EVERY_S = 60.0


@dataclass
class Refusal:
    """A topic the broker refuses (MQTT 5 PUBACK >= 0x80): backed off, logged rate-limited."""

    reason: str
    since: float  # Unix time
    count: int = 0
    logged_at: float = 0.0  # monotonic
    logged_count: int = 0
    until: float = 0.0  # monotonic: no new message on this topic before


class TopicRefusals:
    """The :class:`~edge_agent.mqtt_client.MqttPublisher`'s refused topics and messages.

    A mixin: these methods share the publisher's state (declared below); the pump thread calls
    them, and ``_refused`` is read by others under ``_cond``.
    """

    config: MqttConfig
    device_id: str
    outbox: Outbox
    last_error: str | None
    _cond: threading.Condition
    _rejected: list[tuple[float, str]]  # (when, msg_id)
    _refused: dict[str, Refusal]  # topic -> refusal
    _reject_retry_s: float

    def _count(self, key: str, n: int = 1) -> None:
        raise NotImplementedError  # the publisher's counters (MqttPublisher)

    def _refuse(self, topic_: str, msg_id: str, reason: str) -> None:
        now = time.monotonic()
        self._rejected.append((now, msg_id))
        self._count("rejected")
        with self._cond:
            refusal = self._refused.get(topic_)
            if refusal is None or refusal.reason != reason:
                refusal = self._refused[topic_] = Refusal(reason, time.time())
            refusal.count += 1
            refusal.until = now + self._reject_retry_s
        hint = (
            f"allow user {self.config.username or '(anonymous)'} to publish to "
            f"{self.config.topic_prefix}/{self.device_id}/# in the broker's ACL"
            if "authori" in reason.lower()
            else "see the broker's log"
        )
        self.last_error = f"the broker refuses messages on {topic_}: {reason}; {hint}"
        if refusal.count == 1:
            refusal.logged_at, refusal.logged_count = now, 1
            log.error(
                "mqtt: %s. They are NOT delivered: they stay in the outbox, and the topic is "
                "tried again every %.0f s",
                self.last_error,
                self._reject_retry_s,
            )
        elif now - refusal.logged_at >= REFUSAL_LOG_EVERY_S:
            log.error(
                "mqtt: the broker still refuses %s (%s): %d refusals, %d since the last report",
                topic_,
                reason,
                refusal.count,
                refusal.count - refusal.logged_count,
            )
            refusal.logged_at, refusal.logged_count = now, refusal.count

    def _accepted_again(self, topic_: str) -> None:
        with self._cond:
            refusal = self._refused.pop(topic_)
        log.warning(
            "mqtt: the broker accepts messages on %s again (%d refused before)",
            topic_,
            refusal.count,
        )

    def _retry_rejected(self) -> None:
        if not self._rejected:
            return
        now = time.monotonic()
        due = [m for t, m in self._rejected if now - t >= self._reject_retry_s]
        if due:
            self._rejected = [(t, m) for t, m in self._rejected if now - t < self._reject_retry_s]
            self.outbox.release_in_flight(due)

    def _backed_off_topics(self) -> set[str]:
        now = time.monotonic()
        with self._cond:
            return {t for t, r in self._refused.items() if r.until > now}
