"""A real Mosquitto broker on a free loopback port, and a subscriber that records what arrives.

Shared by the publisher tests and the agent's end-to-end tests (``from mqtt_broker import
MosquittoBroker, Collector``: pytest puts ``tests/`` on the path for ``tests/conftest.py``).
A real broker, not a fake: the point of these tests is PUBACK timing, retained messages, last
wills and reconnects, which a fake would only imitate.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from required_tools import missing

from edge_agent.local_run import free_port


def find_mosquitto() -> str | None:
    """The broker binary: on PATH, or Debian's /usr/sbin (not on a normal user's PATH)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )


def require_mosquitto() -> str:
    """The binary's path; skips the test without it, except under CI, where it fails."""
    binary = find_mosquitto()
    if binary is None:
        missing("mosquitto is not installed (apt-get install -y mosquitto)")
    return binary


class MosquittoBroker:
    """``start()``, ``stop()``, ``kill()``, ``restart()``, ``pause()``: always the same port.

    Without ``persistence`` a restart forgets sessions and retained messages, as a crashed
    broker with a lost disk would. With it, state is written at a clean stop and by ``save()``
    only, so a test decides exactly what a ``kill()`` loses.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        persistence: bool = False,
        listener_options: list[str] | None = None,
        allow_anonymous: bool = True,
        max_inflight: int = 1000,
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto not found; apt-get install -y mosquitto")
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.persistence = persistence
        self.db_file = self.workdir / "mosquitto.db"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # After the listener line: TLS files, require_certificate, password_file, ...
            *(listener_options or []),
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            # Large by default, so that the publisher's own window is what the tests exercise;
            # MQTT 5 clients get it as the broker's Receive Maximum.
            f"max_inflight_messages {max_inflight}",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto drops to user "mosquitto", who cannot read or write the
            # test's private directory (persistence, TLS keys, password file).
            lines.append("user root")
        if persistence:
            # Saved on SIGUSR1 (save()) and at a clean stop only, so a test decides what a
            # kill() loses.
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 3600",
            ]
        else:
            lines.append("persistence false")
        self.config_file.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.running:
            return self
        log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: the broker closes every connection (clients see a disconnect)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.send_signal(signal.SIGCONT)  # in case it was paused
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL (also when paused): unsaved state and unacknowledged messages are lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def save(self, timeout: float = 10.0) -> None:
        """Write the persistence database now (SIGUSR1) and wait until it is on disk."""
        assert self.persistence and self._proc is not None
        before = self.db_file.stat().st_mtime_ns if self.db_file.exists() else -1
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db_file.exists() and self.db_file.stat().st_mtime_ns != before:
                time.sleep(0.05)  # let the write finish
                return
            time.sleep(0.01)
        raise RuntimeError(f"mosquitto did not write {self.db_file}: {self.log_tail()}")

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Collector:
    """A subscriber that records every message; ``wait_for(pred, timeout)`` to synchronise."""

    def __init__(
        self,
        broker: MosquittoBroker,
        topic_filter: str = "#",
        protocol: str = "5",
        persistent_session: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._filter = topic_filter
        v5 = protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{os.getpid()}-{id(self)}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not persistent_session,
        )
        connect_props = None
        if v5 and persistent_session:
            # A consumer that must not miss anything: the broker keeps its session and queues
            # QoS 1 messages while it is away (and across a broker restart with persistence).
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(min_delay=cast(int, 0.2), max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscriptions = 0  # SUBACKs received: one per (re)connect
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(
            broker.host,
            broker.port,
            keepalive=10,
            clean_start=not persistent_session if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_props,
        )
        self.client.loop_start()
        if not self.wait_subscribed(1):
            raise RuntimeError("collector could not subscribe")

    def _on_subscribe(self, *args: Any) -> None:
        with self._cond:
            self.subscriptions += 1
            self._cond.notify_all()

    def wait_subscribed(self, count: int, timeout: float = 10.0) -> bool:
        """Wait for the ``count``-th SUBACK (after a broker restart: the previous count + 1)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.subscriptions < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        # Resubscribe at every connect: a restarted broker without persistence forgot us.
        client.subscribe(self._filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
