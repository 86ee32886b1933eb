"""The publisher's connection: its paho client, its status messages, what paho's thread reports.

paho calls the callbacks below in its network thread, possibly while holding its own message
lock (:mod:`edge_agent.mqtt_client` explains why): they never block and never take a lock of
ours; what the pump must know goes to it as an :data:`Event`.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.mqtt_connection import (
    ConnectionHealth,
    describe_connect_error,
    describe_refusal,
    new_client,
    on_connack,
)
from edge_agent.payloads import status_payload, to_bytes

# The publisher's messages keep the logger name they always had.
log = logging.getLogger("edge_agent.mqtt_client")


@dataclass(frozen=True)
class Ack:
    mid: int
    failed: bool
    reason: str


@dataclass(frozen=True)
class Connected:
    dropped_mids: tuple[int, ...]
    receive_maximum: int | None


@dataclass(frozen=True)
class Disconnected:
    reason: str


Event = Ack | Connected | Disconnected | None  # None only wakes the pump


class PublisherConnection:
    """The :class:`~edge_agent.mqtt_client.MqttPublisher`'s paho client and its callbacks.

    A mixin: these methods share the publisher's state (declared below).
    """

    config: MqttConfig
    device_id: str
    agent_version: str
    status_topic: str
    _model_info: dict[str, Any] | None
    _v5: bool
    _client: mqtt.Client
    _events: queue.SimpleQueue[Event]
    last_error: str | None
    connection: ConnectionHealth
    _connack_ok: bool
    _refused_now: bool
    _stopped: bool

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
        client.on_connect = on_connack(self._on_connect, self._on_refused)
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
    def _on_refused(self, reason_code: ReasonCode) -> None:
        self._refused_now = True
        self.last_error = describe_refusal(reason_code, self.config)
        self.connection.failed(self.last_error)

    def _on_connect(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, properties: Properties | None
    ) -> None:
        self._connack_ok = True
        self.connection.succeeded()
        dropped = client.drop_out_messages()
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._publish_status("online")
        self._events.put(Connected(tuple(m.mid for m in dropped), receive_max))

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
        self._events.put(Disconnected(str(reason_code)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._events.put(Ack(mid, reason_code.is_failure, str(reason_code)))
