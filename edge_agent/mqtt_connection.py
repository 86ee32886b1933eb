"""paho clients built from ``MqttConfig``: API version, protocol, backoff, TLS, credentials.

Shared by every MQTT client of the agent (the publisher, and the ``mqtt://`` frames source can
use it too) so they fail the same way on the same mistake: a missing CA file or a password
without a user name is a one-line error naming the key, not a TLS handshake failure retried
with backoff forever.
"""

from __future__ import annotations

import logging
import ssl
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import MqttConfig
from edge_agent.contract.errors import GalaxyEdgeError

log = logging.getLogger(__name__)


class MqttError(GalaxyEdgeError):
    """The MQTT settings cannot work (missing TLS file, password without user, ...)."""


def new_client(
    config: MqttConfig,
    client_id: str,
    persistent_session: bool,
    password: str | None,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho 2.x client (callback API VERSION2) with security and reconnect backoff applied.

    ``persistent_session`` only matters for MQTT 3.1.1 (clean session off); with MQTT 5 the
    session is chosen at connect time (``clean_start``, Session Expiry Interval).
    """
    if not hasattr(mqtt.Client, "drop_out_messages"):
        raise MqttError(
            "paho-mqtt is too old: galaxy-edge needs paho-mqtt >= 2.2 "
            "(Client.drop_out_messages); pip install 'paho-mqtt>=2.2,<3'"
        )
    v5 = config.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else not persistent_session,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=True,
        manual_ack=manual_ack,
    )
    # paho annotates the delays as int, but its _reconnect_wait computes in float seconds;
    # sub-second minimum delays matter for a quick return after a broker restart.
    client.reconnect_delay_set(
        min_delay=cast(int, config.reconnect_min_s),
        max_delay=cast(int, max(config.reconnect_max_s, config.reconnect_min_s)),
    )
    apply_security(client, config, password)
    return client


def apply_security(client: mqtt.Client, config: MqttConfig, password: str | None) -> None:
    """TLS (server verification, optional client certificate) and user/password on ``client``.

    ``password`` is resolved by the caller (``config.password()``: file or systemd credential)
    and never logged.
    """
    if config.tls is not None:
        tls = config.tls
        for key, path in (
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
        ):
            if path is not None and not path.is_file():
                raise MqttError(f"mqtt.tls.{key}: {path} is not a readable file; fix the path")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise MqttError("mqtt.tls: cert_file and key_file go together (mutual TLS); set both")
        try:
            # ca_certs=None: the system's CA store. Host names are verified unless insecure.
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise MqttError(f"mqtt.tls: cannot load the certificates ({exc})") from exc
        if tls.insecure:
            log.warning("mqtt.tls.insecure: broker host name NOT verified (testing only)")
            client.tls_insecure_set(True)
    if config.username is not None:
        client.username_pw_set(config.username, password)
    elif password is not None:
        raise MqttError("mqtt: a password is configured but mqtt.username is not; set the username")
