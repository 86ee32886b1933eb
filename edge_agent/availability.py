"""The plain ``online`` / ``offline`` of ``<prefix>/<device_id>/available``, on its own connection.

Frigate and Home Assistant read liveness from a retained topic holding the bare text
``online`` or ``offline`` (no JSON template needed), which must also be the last will, so that
a crash or a cut cable turns it ``offline``. MQTT gives a connection one will only, and the
publisher's is the JSON ``status`` object; hence this second, tiny connection with the same
settings (host, TLS, credentials) whose will is the plain ``offline``. Both connections belong
to one process: a crash closes both sockets, and a lost network expires both keep-alives, so
the broker sends both wills. The client id is the publisher's with ``-available`` appended.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.mqtt_connection import (
    ConnectionHealth,
    MqttError,
    describe_refusal,
    new_client,
    on_connack,
)
from edge_agent.payloads import availability_payload, topic

log = logging.getLogger(__name__)


class AvailabilityLink:
    """Retained ``online`` after every connect, ``offline`` as will and at :meth:`stop`."""

    def __init__(
        self, config: MqttConfig, device_id: str, *, client_id: str, password: str | None
    ) -> None:
        self.config = config
        self.topic = topic(config.topic_prefix, device_id, "available")
        self.client_id = f"{client_id}-available"
        self._client = new_client(
            config, client_id=self.client_id, persistent_session=False, password=password
        )
        self._client.will_set(self.topic, availability_payload("offline"), qos=1, retain=True)
        self._client.on_connect = on_connack(self._on_connect, self._on_refused)
        self._started = False
        self._stopped = False
        self.online = threading.Event()  # set once the broker took an ``online`` from us
        # Rate-limited: the publisher's connection reports the same causes in full.
        self.connection = ConnectionHealth("mqtt availability link", meanwhile="not online")

    def _on_refused(self, reason_code: ReasonCode) -> None:
        self.connection.failed(describe_refusal(reason_code, self.config))

    def _on_connect(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, properties: Properties | None
    ) -> None:
        self.connection.succeeded()
        client.publish(self.topic, availability_payload("online"), qos=1, retain=True)
        self.online.set()

    def start(self) -> None:
        """Connect in the background, retrying with the configured backoff."""
        if self._started:
            raise MqttError("AvailabilityLink.start() called twice")
        self._started = True
        cfg = self.config
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=True)
        self._client.loop_start()

    def stop(self, timeout: float) -> None:
        """Publish ``offline`` (a clean DISCONNECT discards the will) and disconnect."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        if self._client.is_connected():
            info = self._client.publish(
                self.topic, availability_payload("offline"), qos=1, retain=True
            )
            try:
                info.wait_for_publish(max(0.05, timeout * 0.8))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: plain offline not published: %s", exc)
        self._client.disconnect()
        # loop_stop() joins paho's thread without a timeout, and that thread can sit in a TCP
        # connect to an unreachable broker: the caller's deadline comes first.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-avail-stop")
        stopper.daemon = True
        stopper.start()
        stopper.join(max(0.05, timeout * 0.2))
