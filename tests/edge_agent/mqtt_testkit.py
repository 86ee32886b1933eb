"""What the MQTT tests share: a publisher's settings, a roomy outbox, a broker's TLS listener,
and a patient wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tls_pki import issue, make_ca

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.outbox import Outbox


def publisher_config(host: str, port: int, tmp_path: Path, **kw: object) -> MqttConfig:
    """The ``mqtt`` section for ``host:port``, its outbox in ``tmp_path``; ``kw``: other keys."""
    return MqttConfig.model_validate(
        {
            "host": host,
            "port": port,
            "keepalive": 30,
            "outbox": OutboxConfig(path=tmp_path / "outbox.sqlite3"),
            **kw,
        }
    )


def roomy_outbox(tmp_path: Path) -> Outbox:
    """An outbox in ``tmp_path`` whose limits no test reaches (1 GiB, one hour)."""
    return Outbox(tmp_path / "outbox.sqlite3", max_bytes=1 << 30, max_age_s=3600)


def server_pki(pki: Path, server_names: str, stranger: str) -> Path:
    """A CA and a server certificate for ``server_names`` (a subjectAltName) in ``pki``, and
    a CA that signed nothing there (its common name ``stranger``): returns that CA's file."""
    make_ca(pki)
    issue(pki, "server", "broker", server_names)
    return make_ca(pki, "other", stranger)


def tls_listener(pki: Path, *more: str) -> list[str]:
    """mosquitto listener options serving the server certificate of ``pki``, then ``more``."""
    return [
        f"cafile {pki / 'ca.pem'}",
        f"certfile {pki / 'server.pem'}",
        f"keyfile {pki / 'server.key'}",
        *more,
    ]


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """True as soon as ``pred()`` is; after ``timeout`` seconds, whatever it says then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
