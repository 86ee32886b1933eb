"""paho clients built from ``MqttConfig``: API version, protocol, backoff, TLS, credentials.

Shared by every MQTT client of the agent (the publisher, and the ``mqtt://`` frames source can
use it too) so they fail the same way on the same mistake: a missing CA file or a password
without a user name is a one-line error naming the key, not a TLS handshake failure retried
with backoff forever.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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


#: What a client does with a successful CONNACK: ``(client, flags, properties)``.
OnAccepted = Callable[[mqtt.Client, mqtt.ConnectFlags, Properties | None], None]
#: What a client does with a CONNACK that refused it: ``(reason_code)``.
OnRefused = Callable[[ReasonCode], None]
OnConnect = Callable[[mqtt.Client, Any, mqtt.ConnectFlags, ReasonCode, Properties | None], None]


def on_connack(accepted: OnAccepted, refused: OnRefused) -> OnConnect:
    """paho's ``on_connect`` (VERSION2 signature) split into its two outcomes.

    Runs in paho's network thread, like any paho callback: neither may block.
    """

    def on_connect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            refused(reason_code)
        else:
            accepted(client, flags, properties)

    return on_connect


# --------------------------------------------------------------------- why a connection failed
# OpenSSL X509_V_ERR_* codes: the chain does not lead to a CA we trust.
_UNTRUSTED = {2, 18, 19, 20, 21, 27, 30, 32}
_NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_EXPIRED, _NOT_YET_VALID = 10, 9


def describe_connect_error(exc: BaseException | None, config: MqttConfig) -> str:
    """One line saying why a TCP/TLS connection to the broker failed, and what to check."""
    where = f"{config.host}:{config.port}"
    tls = config.tls
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(getattr(exc, "verify_code", 0) or 0)
        detail = getattr(exc, "verify_message", None) or str(exc)
        if code in _NAME_MISMATCH:
            return (
                f"TLS: the broker's certificate at {where} is not valid for the name "
                f"{config.host!r} ({detail}); connect to a name in its subjectAltName or reissue it"
            )
        if code in (_EXPIRED, _NOT_YET_VALID):
            return (
                f"TLS: the broker's certificate at {where} is outside its validity ({detail}); "
                "renew it, or check this device's clock (no RTC before NTP?)"
            )
        if tls is not None and tls.ca_file is not None:
            trust = f"mqtt.tls.ca_file ({tls.ca_file})"
            fix = "set ca_file to the CA that signed the broker's certificate"
        else:
            trust = "a CA of the system's store"
            fix = "set mqtt.tls.ca_file to the CA that signed the broker's certificate"
        if code in _UNTRUSTED or code == 0:
            return (
                f"TLS: the broker's certificate at {where} is not signed by {trust} "
                f"({detail}); {fix}"
            )
        return f"TLS: the broker's certificate at {where} was refused ({detail}); check it"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
        hint = (
            "does this port speak TLS?"
            if "WRONG_VERSION_NUMBER" in str(reason).upper()
            else "check mqtt.tls (the broker may require a client certificate: cert_file, key_file)"
        )
        return f"TLS handshake with {where} failed ({reason}); {hint}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot reach {where} (connection refused); is the broker running, on this port?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {config.host!r} ({exc.strerror or exc}); check mqtt.host and DNS"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {where} (timed out); check the network, firewall and mqtt.host"
    if isinstance(exc, OSError):
        return f"cannot reach {where} ({exc.strerror or exc}); check the network and mqtt.host"
    if exc is not None:
        return f"cannot connect to {where} ({type(exc).__name__}: {exc})"
    return f"cannot connect to {where}"


def describe_refusal(reason: object, config: MqttConfig) -> str:
    """A CONNACK that refused us (MQTT 5 reason code, or its 3.1.1 return code)."""
    text = str(reason)
    user = config.username
    who = f"user {user!r}" if user else "no user name"
    if "user name or password" in text.lower():
        return (
            f"broker refused the connection: {text} ({who}); check mqtt.username and the "
            "password (mqtt.password_file or the systemd credential) against the broker's"
        )
    if "not authori" in text.lower():
        return (
            f"broker refused the connection: {text} ({who}); the broker wants credentials it "
            "accepts (mqtt.username and its password) or does not allow this client"
        )
    if "identifier" in text.lower():
        return f"broker refused the connection: {text}; check mqtt.client_id"
    return f"broker refused the connection: {text}"


class ConnectionHealth:
    """Connection attempts of one client: what ``stats`` and ``check`` report, what is logged.

    Every failed attempt counts; the log gets the first at once, then a reminder at most every
    ``log_every_s`` with the number of attempts since (or at once when the cause changes), and
    one line when a connection succeeds again. Thread-safe (paho's thread writes, others read).
    """

    def __init__(
        self,
        name: str,
        *,
        meanwhile: str = "results wait in the outbox",
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.meanwhile = meanwhile  # what the first log line says happens while it fails
        self.log_every_s = log_every_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.connected = False
        self.since: float | None = None  # Unix time of the last change (connected or failing)
        self.last_error: str | None = None
        self.failed_attempts = 0  # since the last successful connection
        self._failing_since_mono: float | None = None
        self._logged_at = 0.0
        self._logged_cause: str | None = None
        self._logged_count = 0

    def failed(self, cause: str) -> None:
        now = self._clock()
        with self._lock:
            self.failed_attempts += 1
            self.last_error = cause
            if self.connected or self._failing_since_mono is None:
                self.connected = False
                self.since = self._wall()
                self._failing_since_mono = now
            first = self.failed_attempts == 1
            if first or cause != self._logged_cause or now - self._logged_at >= self.log_every_s:
                since = self.failed_attempts - self._logged_count
                self._logged_at, self._logged_cause = now, cause
                self._logged_count = self.failed_attempts
                if first:
                    log.error("%s: %s (retrying; %s)", self.name, cause, self.meanwhile)
                else:
                    log.error(
                        "%s: still not connected after %d attempts in %.0f s (%d since the "
                        "last report): %s",
                        self.name,
                        self.failed_attempts,
                        now - self._failing_since_mono,
                        since,
                        cause,
                    )

    def lost(self, cause: str) -> None:
        """An established connection dropped (logged by the caller); the next attempt counts."""
        with self._lock:
            self.connected = False
            self.last_error = cause
            self.since = self._wall()
            self._failing_since_mono = self._clock()

    def succeeded(self) -> None:
        now = self._clock()
        with self._lock:
            if self.failed_attempts:
                log.warning(
                    "%s: connected after %d failed attempts in %.0f s",
                    self.name,
                    self.failed_attempts,
                    now - (self._failing_since_mono or now),
                )
            self.connected = True
            self.since = self._wall()
            self.last_error = None
            self.failed_attempts = 0
            self._failing_since_mono = None
            self._logged_cause = None
            self._logged_count = 0

    def snapshot(self) -> dict[str, Any]:
        """``{connected, since, last_error, failed_attempts}`` (``since``: Unix time or None)."""
        with self._lock:
            return {
                "connected": self.connected,
                "since": self.since,
                "last_error": self.last_error,
                "failed_attempts": self.failed_attempts,
            }
