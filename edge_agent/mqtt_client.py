"""Publishing the outbox over MQTT with at-least-once delivery (paho-mqtt 2.x, API VERSION2).

Who owns what:

* The outbox is the single source of truth. A message leaves it only when the broker
  acknowledged it (``on_publish`` with a success reason code: PUBACK for QoS 1).
* paho is a pipe. At every (re)connect, before paho would resend what it still holds,
  ``on_connect`` takes those messages back with ``drop_out_messages()`` and the pump releases
  them in the outbox, so they are resent from there, oldest first, through the same bounded
  window. Without that, paho's copies and the outbox's would both be resent.
* One pump thread owns the ``mid -> msg_id`` map. paho calls ``on_publish`` while holding its
  own message lock, possibly before ``publish()`` has even returned the ``mid`` to the pump;
  the callbacks therefore only enqueue events, and the pump applies them in order. Taking a
  lock of ours inside a paho callback would deadlock against ``publish()`` in the pump.

Duplicates are possible (a PUBACK lost with the connection, a crash after publishing):
consumers deduplicate on the payload's ``id`` (docs/mqtt.md).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent import __version__
from edge_agent.availability import AvailabilityLink
from edge_agent.config import MqttConfig
from edge_agent.mqtt_connection import (
    ConnectionHealth,
    MqttError,
    describe_connect_error,
    describe_refusal,
    new_client,
)
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.payloads import THUMBNAIL_TOPIC, status_payload, to_bytes, topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ack:
    mid: int
    failed: bool
    reason: str


@dataclass(frozen=True)
class _Connected:
    dropped_mids: tuple[int, ...]
    receive_maximum: int | None


@dataclass(frozen=True)
class _Disconnected:
    reason: str


_Event = _Ack | _Connected | _Disconnected | None  # None only wakes the pump
REFUSAL_LOG_EVERY_S = 60.0


@dataclass
class _Refusal:
    """A topic the broker refuses (MQTT 5 PUBACK >= 0x80): backed off, logged rate-limited."""

    reason: str
    since: float  # Unix time
    count: int = 0
    logged_at: float = 0.0  # monotonic
    logged_count: int = 0
    until: float = 0.0  # monotonic: no new message on this topic before


class MqttPublisher:
    """Moves outbox messages to the broker with a bounded in-flight window; see module doc."""

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        device_id: str,
        model_info: Mapping[str, Any] | None,
        *,
        password: str | None = None,
        agent_version: str = __version__,
        poll_interval_s: float = 0.05,
        reject_retry_s: float = 30.0,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.device_id = device_id
        self.agent_version = agent_version
        self.status_topic = topic(config.topic_prefix, device_id, "status")
        self._model_info = dict(model_info) if model_info is not None else None
        self._poll_s = poll_interval_s
        self._reject_retry_s = reject_retry_s
        self._v5 = config.protocol == "5"

        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._mids: dict[int, str] = {}  # pump thread only
        self._rejected: list[tuple[float, str]] = []  # pump thread only: (when, msg_id)
        self._window = config.max_in_flight
        self._session_ready = False
        self._cond = threading.Condition()
        self._stop_pump = threading.Event()
        self._pump: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self.last_error: str | None = None
        self.error: BaseException | None = None  # what killed the pump, if anything
        self._counts = {"published": 0, "acked": 0, "resent": 0, "rejected": 0, "connects": 0}
        self.connection = ConnectionHealth("mqtt")
        self._connack_ok = False  # paho thread: this connection got a successful CONNACK
        self._refused_now = False  # paho thread: this connection's CONNACK refused us
        self._topic_of: dict[str, str] = {}  # pump thread only: msg_id -> topic, in flight
        self._refused: dict[str, _Refusal] = {}  # topic -> refusal; written by the pump

        self._client = self._make_client(password)
        # The plain online/offline twin of ``status``, on its own connection (one will each).
        self.availability = AvailabilityLink(
            config,
            device_id,
            client_id=config.client_id or f"galaxy-edge-{device_id}",
            password=password,
        )

    # ------------------------------------------------------------------ set-up
    def _make_client(self, password: str | None) -> mqtt.Client:
        cfg = self.config
        client = new_client(
            cfg,
            client_id=cfg.client_id or f"galaxy-edge-{self.device_id}",
            # A publisher needs no broker-side session: what is unacked lives in the outbox.
            persistent_session=False,
            password=password,
        )
        # paho's own in-flight limit sits above ours so it never queues what the pump sent;
        # the slack covers the birth, offline and stats messages (not in the outbox).
        client.max_inflight_messages_set(cfg.max_in_flight + 8)
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, self._status_bytes("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _status_bytes(self, state: str) -> bytes:
        at = time.time() if state == "online" else None
        return to_bytes(
            status_payload(
                state=state,
                device_id=self.device_id,
                agent_version=self.agent_version,
                model=self._model_info,
                at=at,
            )
        )

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        return self._client.publish(
            self.status_topic, self._status_bytes(state), qos=1, retain=True,
            properties=self._publish_properties(),
        )  # fmt: skip

    def _publish_properties(self, content_type: str = "application/json") -> Properties | None:
        if not self._v5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        if content_type == "application/json":
            props.PayloadFormatIndicator = 1  # UTF-8 text
        props.ContentType = content_type
        return props

    # ------------------------------------------------------------------ paho callbacks
    # Network thread. Never block, never take our locks (see module docstring).
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused_now = True
            self.last_error = describe_refusal(reason_code, self.config)
            self.connection.failed(self.last_error)
            return
        self._connack_ok = True
        self.connection.succeeded()
        dropped = client.drop_out_messages()
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._publish_status("online")
        self._events.put(_Connected(tuple(m.mid for m in dropped), receive_max))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # TCP refused, DNS, or a TLS handshake that failed (bad CA, no client certificate).
        # paho calls this inside its ``except OSError:`` block: the exception is the cause.
        self.last_error = describe_connect_error(sys.exc_info()[1], self.config)
        self.connection.failed(self.last_error)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Closed before any CONNACK is a failed attempt too: that is what a refused client
        # certificate looks like under TLS 1.3 (the handshake "succeeds", the broker closes
        # the connection right after), or a TLS port spoken to in plain text. A CONNACK
        # refusal (bad password) was counted already, with the better explanation.
        cfg = self.config
        if not self._stopped:
            if self._connack_ok:
                self.last_error = f"connection to {cfg.host}:{cfg.port} lost ({reason_code})"
                self.connection.lost(self.last_error)
            elif not self._refused_now:
                self.last_error = (
                    f"the broker at {cfg.host}:{cfg.port} closed the connection before "
                    f"answering ({reason_code}); "
                    + (
                        "it may require a client certificate (mqtt.tls.cert_file, key_file)"
                        if cfg.tls is not None
                        else "does it expect TLS on this port (mqtt.tls)?"
                    )
                )
                self.connection.failed(self.last_error)
        self._connack_ok = self._refused_now = False
        self._events.put(_Disconnected(str(reason_code)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._events.put(_Ack(mid, reason_code.is_failure, str(reason_code)))

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the pump."""
        if self._started:
            raise MqttError("MqttPublisher.start() called twice")
        self._started = True
        cfg = self.config
        if not self._v5:
            log.warning(
                "mqtt: protocol 3.1.1 cannot say that the broker refused a message (an ACL): "
                "mosquitto acknowledges and drops it, so it is lost; use protocol 5 to be told"
            )
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=True)
        self._client.loop_start()
        self._pump = threading.Thread(target=self._run, name="mqtt-pump", daemon=True)
        self._pump.start()
        self.availability.start()

    @property
    def connected(self) -> bool:
        """Connected, and what the last connection left in flight has been taken back."""
        return self._session_ready

    def in_flight(self) -> int:
        """Outbox messages published and not yet acknowledged."""
        return len(self._mids)

    def counters(self) -> dict[str, int]:
        """published / acked / resent / rejected / connects since start (for ``stats``)."""
        with self._cond:
            return dict(self._counts)

    def health(self) -> dict[str, Any]:
        """The connection and what the broker refuses, for ``stats``: ``connected``, ``since``
        (Unix time of the last change), ``last_error``, ``failed_attempts`` (since the last
        successful connection) and ``refused_topics`` (topic -> the broker's reason)."""
        state = self.connection.snapshot()
        with self._cond:
            state["refused_topics"] = {t: r.reason for t, r in self._refused.items()}
        return state

    def kick(self) -> None:
        """Wake the pump now (after a put) instead of at its next poll."""
        self._events.put(None)

    def wait_connected(self, timeout: float) -> bool:
        return self._wait(lambda: self._session_ready, timeout)

    def wait_drained(self, timeout: float) -> bool:
        """True once the outbox is empty and nothing is in flight, False at the timeout."""
        return self._wait(lambda: not self._mids and self.outbox.depth() == 0, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return False
                self._cond.wait(min(remaining, self._poll_s))
            return True

    def publish_direct(
        self, topic_: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> bool:
        """Publish outside the outbox (``stats``: QoS 0, the next one supersedes it).

        Returns False when not connected: such a message is skipped, not queued.
        """
        if not self._session_ready:
            return False
        info = self._client.publish(
            topic_, payload, qos=qos, retain=retain, properties=self._publish_properties()
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def update_model_info(self, model_info: Mapping[str, Any] | None) -> None:
        """After a reload: new birth message now, and the will of the next connections."""
        self._model_info = dict(model_info) if model_info is not None else None
        self._client.will_set(self.status_topic, self._status_bytes("offline"), qos=1, retain=True)
        if self._session_ready:
            self._publish_status("online")

    def stop(self, timeout: float) -> bool:
        """Drain what the timeout allows, publish ``offline``, disconnect. True if drained.

        Whatever is not acknowledged stays in the outbox for the next start. The clean
        DISCONNECT makes the broker discard the last will, hence the explicit ``offline``.
        """
        if not self._started or self._stopped:
            return False
        self._stopped = True
        deadline = time.monotonic() + timeout
        # Keep a little of the budget for offline + DISCONNECT: systemd kills at TimeoutStopSec.
        reserve = min(1.0, 0.2 * timeout)
        drained = self.wait_drained(max(0.0, timeout - reserve))
        self._stop_pump.set()
        self.kick()
        if self._pump is not None:
            self._pump.join(max(0.1, deadline - time.monotonic()))
        if self._client.is_connected():
            info = self._publish_status("offline")
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: offline status not published: %s", exc)
        self._client.disconnect()
        # paho's loop_stop() joins its thread without a timeout, and that thread can sit in a
        # 5 s TCP connect to an unreachable broker; systemd's stop timeout comes first.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        self.availability.stop(max(0.1, deadline - time.monotonic()))
        self._session_ready = False
        # PUBACKs that arrived after the pump stopped still count (and nothing else may
        # revive the session).
        self._apply_events([e for e in self._drain_events(block=False) if isinstance(e, _Ack)])
        self._mids.clear()
        self._topic_of.clear()
        self.outbox.release_in_flight()
        return drained

    # ------------------------------------------------------------------ the pump
    def _run(self) -> None:
        try:
            while not self._stop_pump.is_set():
                try:
                    self._apply_events(self._drain_events(block=True))
                    if self._stop_pump.is_set():
                        break
                    self._retry_rejected()
                    if self._session_ready:
                        self._fill_window()
                except (sqlite3.Error, OutboxError) as exc:
                    # A full or failing disk: keep the connection, retry, say so loudly.
                    self.last_error = f"outbox: {exc}"
                    log.error("mqtt pump: %s; retrying in 1 s", self.last_error)
                    self._stop_pump.wait(1.0)
                with self._cond:
                    self._cond.notify_all()
        except Exception as exc:
            self.error = exc
            log.exception("mqtt pump died; results stay in the outbox")
            raise
        finally:
            with self._cond:
                self._cond.notify_all()

    def _drain_events(self, block: bool) -> list[_Event]:
        events: list[_Event] = []
        try:
            if block:
                events.append(self._events.get(timeout=self._poll_s))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return events

    def _apply_events(self, events: list[_Event]) -> None:
        acked: list[str] = []
        for event in events:
            if isinstance(event, _Ack):
                msg_id = self._mids.pop(event.mid, None)
                if msg_id is None:
                    continue  # birth, offline, stats, or taken back at a reconnect
                topic_ = self._topic_of.pop(msg_id, "")
                if event.failed:
                    # MQTT 5 PUBACK >= 0x80 (not authorized, quota exceeded, ...): NOT
                    # delivered. Keep it, out of the window, and back off its topic.
                    self._refuse(topic_, msg_id, event.reason)
                else:
                    acked.append(msg_id)
                    if topic_ in self._refused:
                        self._accepted_again(topic_)
            elif isinstance(event, _Connected):
                # Ack what came before the reconnect first, then take back paho's leftovers.
                self._ack(acked)
                acked = []
                self._on_session(event)
            elif isinstance(event, _Disconnected):
                if self._session_ready:  # failed attempts are logged by self.connection
                    log.warning(
                        "mqtt: disconnected (%s); %d in flight", event.reason, len(self._mids)
                    )
                self._session_ready = False
        self._ack(acked)

    def _ack(self, msg_ids: list[str]) -> None:
        if msg_ids:
            # Under the condition's lock, so wait_drained() never sees the outbox empty while
            # the counter still lags behind it.
            with self._cond:
                self.outbox.ack_many(msg_ids)
                self._counts["acked"] += len(msg_ids)

    def _on_session(self, event: _Connected) -> None:
        taken_back = [self._mids.pop(mid) for mid in event.dropped_mids if mid in self._mids]
        resent = self.outbox.release_in_flight(taken_back)
        self._window = self.config.max_in_flight
        if event.receive_maximum:
            # Sending more than the broker's Receive Maximum gets us disconnected (0x93);
            # one of its slots stays free for the QoS 1 status messages.
            self._window = max(1, min(self._window, int(event.receive_maximum) - 1))
        with self._cond:
            self._counts["resent"] += resent
            self._counts["connects"] += 1
            self._session_ready = True
            self.last_error = None
            self._cond.notify_all()
        log.info(
            "mqtt: connected to %s:%s (MQTT %s), %d to resend, window %d",
            self.config.host, self.config.port, self.config.protocol, resent, self._window,
        )  # fmt: skip

    def _refuse(self, topic_: str, msg_id: str, reason: str) -> None:
        now = time.monotonic()
        self._rejected.append((now, msg_id))
        self._count("rejected")
        with self._cond:
            refusal = self._refused.get(topic_)
            if refusal is None or refusal.reason != reason:
                refusal = self._refused[topic_] = _Refusal(reason, time.time())
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

    def _fill_window(self) -> None:
        free = self._window - len(self._mids)
        if free <= 0:
            return
        items = self.outbox.take_unsent(free, exclude_topics=self._backed_off_topics())
        if not items:
            return
        self.outbox.mark_in_flight(item.msg_id for item in items)
        props = self._publish_properties()
        jpeg_props = self._publish_properties("image/jpeg")  # mqtt.thumbnails
        for n, item in enumerate(items):
            is_jpeg = item.topic.rsplit("/", 2)[-2:-1] == [THUMBNAIL_TOPIC]
            info = self._client.publish(
                item.topic, item.payload, qos=item.qos, properties=jpeg_props if is_jpeg else props
            )
            queued = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                # Not connected any more: paho keeps a QoS>0 message, and the next on_connect
                # hands it back through drop_out_messages(), so it stays tracked.
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and item.qos > 0
            )
            if not queued:
                self.outbox.release_in_flight(i.msg_id for i in items[n:])
                log.warning("mqtt: publish failed (%s); will retry", mqtt.error_string(info.rc))
                return
            self._mids[info.mid] = item.msg_id
            self._topic_of[item.msg_id] = item.topic
            self._count("published")

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self._counts[key] += n
