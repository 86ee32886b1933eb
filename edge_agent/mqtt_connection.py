"""TLS and credentials of a paho client, checked before the first connection attempt.

Shared by every MQTT client of the agent (the publisher, and the ``mqtt://`` frames source can
use it too) so they fail the same way on the same mistake: a missing CA file or a password
without a user name is a one-line error naming the key, not a TLS handshake failure retried
with backoff forever.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt

from edge_agent.config import MqttConfig
from edge_agent.errors import GalaxyEdgeError

log = logging.getLogger(__name__)


class MqttError(GalaxyEdgeError):
    """The MQTT settings cannot work (missing TLS file, password without user, ...)."""


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
