"""The agent as systemd sees it: a separate process, notify socket, SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from agent_testkit import agent_config, drop_file, galaxy_like, preload_inbox, write_config
from mqtt_broker import Collector, MosquittoBroker

pytestmark = pytest.mark.mqtt
T = "galaxy-edge/dev1/"


def refs(c: Collector) -> set[str]:
    return {
        json.loads(m.payload)["frame_ref"].rsplit("@", 1)[0] for m in c.on(T + "classifications")
    }


def spawn(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def receive(sock: socket.socket, until: str, timeout: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in m for m in out):
            break
    return out


def test_notify_ready_watchdog_status_stopping(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    # WATCHDOG_PID must name the agent: start it through a shell that execs, so the pid matches.
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f'WATCHDOG_PID=$$ exec "{sys.executable}" -m edge_agent run --config "{cfg}"',
        ],
        env={**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "600000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        first = receive(sock, "READY=1", 30)
        assert any(m.startswith("READY=1") for m in first), first
        ready_at = time.monotonic()
        later = receive(sock, "never", 1.5)
        watchdog = [m for m in later if m == "WATCHDOG=1"]
        assert len(watchdog) >= 3, later  # every 0.3 s (half of WATCHDOG_USEC)
        assert any(m.startswith("STATUS=") and "fps in" in m for m in first + later)
        assert time.monotonic() - ready_at < 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        tail = receive(sock, "STOPPING=1", 2)
        assert any(m.startswith("STOPPING=1") for m in tail), tail
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_sigkill_and_restart_loses_nothing(
    tmp_path: Path, tiny_bundle: Path, mosquitto: MosquittoBroker
) -> None:
    raw = agent_config(
        tmp_path, tiny_bundle, mosquitto, pipeline={"max_batch": 2, "max_wait_ms": 0}
    )
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox = tmp_path / "inbox"
    paths = preload_inbox(inbox, 40, 400)
    collector = Collector(mosquitto)
    proc = spawn(cfg)
    try:
        assert collector.wait_for(lambda _: len(refs(collector)) >= 3, 30), proc.stdout
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done_before = len(refs(collector))
        assert done_before < 40, "too fast to kill mid-stream; make the inputs larger"
        late = drop_file(inbox, "late.png", cv2.imencode(".png", galaxy_like(99))[1].tobytes())
        proc = spawn(cfg)
        want = {str(p) for p in [*paths, late]}
        assert collector.wait_for(lambda _: want <= refs(collector), 60), want - refs(collector)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
    ids = [json.loads(m.payload)["id"] for m in collector.on(T + "classifications")]
    assert len(set(ids)) == 41  # duplicates allowed, each with the stable id of its input
