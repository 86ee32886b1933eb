"""``mqtt://host:port[/prefix]``: receiver frames on ``<prefix>/<device_id>/frames``.

Frames arrive as encoded image bytes at QoS 1 with metadata in MQTT 5 user properties
(``frame_ref`` names the frame; any other property is carried into the result). The client
acknowledges a frame (PUBACK, paho ``manual_ack``) only when its result is in the durable outbox,
and its persistent session (clean start off, a session expiry) keeps frames at the broker while
the agent restarts: at-least-once from receiver to consumer. MQTT 5's Receive Maximum is the
queue size, so the broker itself holds back what the agent cannot take yet.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.mqtt_connection import (
    ConnectionHealth,
    describe_connect_error,
    describe_refusal,
    new_client,
)
from edge_agent.sources.base import Frame, FrameQueue, Source, SourceError

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 7 * 24 * 3600


class MqttFrameSource(Source):
    kind = "mqtt"

    def __init__(
        self,
        name: str,
        queue: FrameQueue,
        formats: tuple[str, ...],
        uri: str,
        config: MqttConfig,
        device_id: str,
    ) -> None:
        super().__init__(name, queue, formats)
        parts = urlsplit(uri)
        # mqtt:// alone: the broker of the mqtt section (same TLS and credentials either way).
        self.host = parts.hostname or config.host
        try:
            self.port = parts.port or (config.port if not parts.hostname else 1883)
        except ValueError as exc:
            raise SourceError(f"{uri}: bad port ({exc})") from exc
        prefix = parts.path.strip("/") or config.topic_prefix
        self.topic = f"{prefix}/{device_id}/frames"
        self.config = config
        self.client_id = f"{config.client_id or 'galaxy-edge-' + device_id}-frames"
        self.v5 = config.protocol == "5"
        secret = config.password()
        password = secret.get_secret_value() if secret is not None else None
        self.client = new_client(config, self.client_id, persistent_session=True,
                                 password=password, manual_ack=True)  # fmt: skip
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        # Failed attempts logged with their cause, rate-limited (as the publisher's).
        self.connection = ConnectionHealth(f"{name}: mqtt", meanwhile="no frames come in")
        self._where = config.model_copy(update={"host": self.host, "port": self.port})
        self.connected = threading.Event()
        self.received = 0
        self.paused = False

    def start(self) -> None:
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = max(1, min(self.queue.maxsize, 65535))
        self.client.connect_async(
            self.host,
            self.port,
            keepalive=self.config.keepalive,
            clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.connection.failed(describe_refusal(reason, self._where))
            return
        self.connection.succeeded()
        client.subscribe(self.topic, qos=1)
        self.connected.set()
        log.info("%s: subscribed to %s", self.name, self.topic)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError:`` block: the exception is the cause.
        self.connection.failed(describe_connect_error(sys.exc_info()[1], self._where))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.paused:
            return
        meta: dict[str, str] = {}
        props = getattr(message, "properties", None)
        for key, value in getattr(props, "UserProperty", None) or []:
            meta[str(key)] = str(value)
        payload = bytes(message.payload)
        ref = meta.pop("frame_ref", "") or "sha256:" + hashlib.sha256(payload).hexdigest()[:32]
        mid, qos = message.mid, message.qos
        self.received += 1

        def ack() -> None:
            if qos > 0:
                client.ack(mid, qos)

        frame = Frame(
            source=self.name,
            frame_ref=ref,
            data=payload,
            formats=self.formats,
            metadata=meta,
            on_done=ack,
        )
        # Receive Maximum keeps this from blocking under MQTT 5; under 3.1.1 a full queue
        # holds the network thread, which is the back-pressure that protocol allows.
        while not self.queue.put(frame, timeout=1.0):
            if self.stopping.is_set() or self.queue.closed:
                return

    def pause(self) -> None:
        """Take no new frames but stay connected, so frames drained now can be acknowledged.

        Not an unsubscribe: that would remove the subscription from the persistent session,
        and frames sent while the agent is down would no longer be kept for it. A frame that
        arrives while paused is left unacknowledged: the broker sends it again next session.
        """
        self.paused = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.client.disconnect()
        self.client.loop_stop()
