"""The agent run on this machine, as the demos and the benchmarks set it up.

* :func:`start_mosquitto`: a private broker on a free loopback port, once it listens;
* :func:`watched_folder_config`: ``edge-agent run``'s config for one watched folder, its state
  and quarantine beside it, results to that broker;
* :func:`land`: a frame written beside the folder's files and renamed in, as a careful receiver
  does (the agent never sees half a file);
* :func:`stop_process`: SIGTERM, as systemd stops a service, and SIGKILL if that is not enough.

Used by ``scripts/demo.py``, ``scripts/demo_live.py`` and ``bench/``; nothing in the agent itself
imports it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from edge_agent.contract.errors import GalaxyEdgeError

HOST = "127.0.0.1"


class BrokerStartError(GalaxyEdgeError):
    """The private mosquitto cannot be started: not installed, or not listening in time."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    """The broker's binary: on PATH, or Debian's ``/usr/sbin`` (not on a normal user's PATH)."""
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(found, os.X_OK):
        raise BrokerStartError("mosquitto not found; run scripts/setup (apt-get install mosquitto)")
    return found


def start_mosquitto(
    work: Path,
    *,
    options: Sequence[str] = (),
    log: IO[bytes] | int = subprocess.DEVNULL,
    timeout: float = 10.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free loopback port, anonymous, without persistence; once it listens.

    Its config is ``work/mosquitto.conf``, with ``options`` (mosquitto.conf lines) added; its
    output goes to ``log``. Returns the process (the caller terminates it) and the port.
    """
    binary = mosquitto_binary()
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} {HOST}", "allow_anonymous true", "persistence false", *options]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise BrokerStartError(f"mosquitto did not listen on {HOST}:{port} (config: {conf})")


def watched_folder_config(
    work: Path,
    bundle: Path,
    port: int,
    *,
    device_id: str,
    stats_interval_s: float,
    **settings: Any,
) -> dict[str, Any]:
    """``edge-agent run``'s config: the folder ``work/inbox`` watched, results to the broker.

    State (ledger, outbox) goes to ``work/state``, rejected inputs to ``work/quarantine``.
    ``settings`` are more top-level keys; one whose value is a dict is merged into the default
    of that key (``pipeline``, ``mqtt``), any other replaces it (``sources``).
    """
    config: dict[str, Any] = {
        "device_id": device_id,
        "bundle": str(bundle),
        "sources": [{"uri": f"dir://{work / 'inbox'}", "name": "inbox"}],
        "pipeline": {"max_batch": 8, "max_wait_ms": 50},
        "quarantine_dir": str(work / "quarantine"),
        "state_dir": str(work / "state"),
        "stats_interval_s": stats_interval_s,
        "mqtt": {
            "host": HOST,
            "port": port,
            "outbox": {"path": str(work / "state" / "outbox.sqlite3")},
        },
    }
    return merged(config, settings)


def merged(config: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``settings`` applied, in place: a dict value is merged into the dict
    already there (one level deep), any other value replaces what was there."""
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def land(folder: Path, name: str, data: bytes) -> Path:
    """``data`` as ``folder/name``: written to a dotted ``.part`` beside it, then renamed."""
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    target = folder / name
    os.replace(tmp, target)
    return target


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if ``proc`` still runs ``timeout`` seconds later; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
