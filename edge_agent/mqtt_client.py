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

The connection and paho's callbacks are :mod:`edge_agent.mqtt_publisher_connection`'s; topics
the broker refuses, :mod:`edge_agent.mqtt_refusals`'.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge_agent import __version__
from edge_agent.availability import AvailabilityLink
from edge_agent.config import MqttConfig
from edge_agent.mqtt_connection import ConnectionHealth, MqttError
from edge_agent.mqtt_publisher_connection import (
    Ack,
    Connected,
    Disconnected,
    Event,
    PublisherConnection,
)
from edge_agent.mqtt_refusals import REFUSAL_LOG_EVERY_S, Refusal, TopicRefusals
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.payloads import THUMBNAIL_TOPIC, topic

__all__ = ["REFUSAL_LOG_EVERY_S", "MqttError", "MqttPublisher"]

log = logging.getLogger(__name__)


class MqttPublisher(PublisherConnection, TopicRefusals):
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

        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
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
        self._refused: dict[str, Refusal] = {}  # topic -> refusal; written by the pump

        self._client = self._make_client(password)
        # The plain online/offline twin of ``status``, on its own connection (one will each).
        self.availability = AvailabilityLink(
            config,
            device_id,
            client_id=config.client_id or f"galaxy-edge-{device_id}",
            password=password,
        )

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
        self._apply_events([e for e in self._drain_events(block=False) if isinstance(e, Ack)])
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

    def _drain_events(self, block: bool) -> list[Event]:
        events: list[Event] = []
        try:
            if block:
                events.append(self._events.get(timeout=self._poll_s))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return events

    def _apply_events(self, events: list[Event]) -> None:
        acked: list[str] = []
        for event in events:
            if isinstance(event, Ack):
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
            elif isinstance(event, Connected):
                # Ack what came before the reconnect first, then take back paho's leftovers.
                self._ack(acked)
                acked = []
                self._on_session(event)
            elif isinstance(event, Disconnected):
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

    def _on_session(self, event: Connected) -> None:
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
