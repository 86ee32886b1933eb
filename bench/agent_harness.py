"""The agent as systemd runs it, a private broker and a consumer: shared by the agent benchmarks.

* :func:`start_broker`: a private ``mosquitto`` on a free loopback port
  (``edge_agent.local_run``, as the demos start it);
* :class:`Subscriber`: a consumer of the agent's classifications, each with its arrival time
  (``time.time()``), deduplicated on the result id (QoS 1 may deliver twice);
* :class:`AgentProcess`: ``python -m edge_agent run`` with a watched folder (and optionally the
  MQTT ``frames`` input), started and stopped the way systemd does (READY=1 on a notify socket,
  SIGTERM), with its peak RSS and CPU time.

Imported by ``bench_agent.py``, ``bench_latency.py`` and ``soak_agent.py`` (``python
bench/NAME.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.local_run import BrokerStartError, start_mosquitto, watched_folder_config

DEVICE = "bench"
PREFIX = "galaxy-edge"


def when(text: str) -> float:
    """An ISO 8601 timestamp of a payload as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def start_broker(work: Path, options: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """A private mosquitto (config and ``options`` in ``work``) and its port; exits if it fails."""
    try:
        return start_mosquitto(work, options=options)
    except BrokerStartError as exc:
        raise SystemExit(f"bench: {exc}") from None


class Subscriber:
    """A consumer of the agent's classifications (and a publisher of frames, MQTT 5)."""

    def __init__(self, port: int) -> None:
        self._cond = threading.Condition()
        self._first: dict[str, tuple[dict[str, Any], float]] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-subscriber", protocol=mqtt.MQTTv5
        )
        topic = f"{PREFIX}/{DEVICE}/classifications"
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        at = time.time()
        body = json.loads(m.payload)
        with self._cond:
            self._first.setdefault(body["id"], (body, at))
            self._cond.notify_all()

    def results(self) -> list[tuple[dict[str, Any], float]]:
        """First arrival of each classification id, with its arrival time."""
        with self._cond:
            return list(self._first.values())

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once ``count`` distinct classifications have arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._first) >= count, timeout)

    def publish_frame(self, data: bytes, frame_ref: str) -> None:
        """A receiver frame on the agent's ``frames`` topic (QoS 1, ``frame_ref`` property)."""
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("frame_ref", frame_ref)]
        self.client.publish(f"{PREFIX}/{DEVICE}/frames", data, qos=1, properties=props)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AgentProcess:
    """``edge-agent run`` as systemd starts it: a watched folder, optionally the frames topic."""

    def __init__(
        self,
        bundle: Path,
        work: Path,
        *,
        port: int | None,
        batch: int = 8,
        max_wait_ms: float = 50.0,
        threads: int | None = None,
        spinning: bool | None = None,
        mqtt_frames: bool = False,
        streams: int | None = None,
    ) -> None:
        self.work = work
        self.inbox = work / "inbox"
        self.inbox.mkdir(parents=True)
        self.staging = work / "staging"  # same file system: a rename lands a file at once
        self.staging.mkdir()
        self.outbox = work / "outbox.sqlite3"
        pipeline: dict[str, Any] = {"max_batch": batch, "max_wait_ms": max_wait_ms}
        if threads is not None:
            pipeline["intra_op_threads"] = threads
        if spinning is not None:
            pipeline["intra_op_spinning"] = spinning
        if streams is not None:
            pipeline["inference_streams"] = streams
        sources: list[dict[str, Any]] = [
            {"uri": f"dir://{self.inbox}", "name": "inbox", "queue_size": 64}
        ]
        if mqtt_frames and port is not None:
            sources.append({"uri": f"mqtt://127.0.0.1:{port}", "name": "receiver"})
        # Without a broker, port 9 (discard): every result stays in the outbox.
        config = watched_folder_config(
            work,
            bundle,
            9 if port is None else port,
            device_id=DEVICE,
            stats_interval_s=3600,
            sources=sources,
            pipeline=pipeline,
            drain_timeout_s=3,
            log_level="WARNING",
            mqtt={"outbox": {"path": str(self.outbox)}},
        )
        (work / "agent.yaml").write_text(yaml.safe_dump(config))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(work / "notify.sock"))
        sock.settimeout(180)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(work / "agent.yaml")],
            env={**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock")},
        )
        while not sock.recv(4096).startswith(b"READY=1"):
            pass
        self.ready_s = time.monotonic() - t0
        # Read until stop(), as systemd does: the agent goes on sending WATCHDOG and STATUS.
        self.notify_sock = sock
        self._stopping = threading.Event()
        self._drainer = threading.Thread(target=self._drain_notify, daemon=True)
        self._drainer.start()
        self.stop_s: float | None = None

    def _drain_notify(self) -> None:
        self.notify_sock.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                self.notify_sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return

    def land(self, source: Path, name: str) -> float:
        """Copy ``source`` into staging, then rename it into the inbox; returns the landing time."""
        staged = self.staging / name
        shutil.copyfile(source, staged)
        at = time.time()
        os.replace(staged, self.inbox / name)
        return at

    def cpu_s(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def outbox_results(self) -> list[tuple[dict[str, Any], float]]:
        """Classifications committed to the outbox, each with its ``classified_at``."""
        with sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT payload FROM messages WHERE topic LIKE '%/classifications'"
            ).fetchall()
        bodies = [json.loads(r[0]) for r in rows]
        return [(b, when(b["classified_at"])) for b in bodies]

    def peak_rss_mb(self) -> float:
        """VmHWM of the agent's own image (ru_maxrss of a child counts the parent's pages)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; ``stop_s`` is the time to exit (None: killed at 60 s)."""
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            self.proc.wait(60)
            self.stop_s = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stopping.set()
        self._drainer.join()
        self.notify_sock.close()
