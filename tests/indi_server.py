"""A real ``indiserver`` with Debian's simulators on a free loopback port, for tests.

``indiserver`` listens on all interfaces; tests only ever talk to it on 127.0.0.1. Each server
gets its own port, Unix socket and ``HOME`` (the drivers write ``~/.indi``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

DRIVERS = ("indi_simulator_telescope", "indi_simulator_ccd")


def find_indiserver() -> str | None:
    return shutil.which("indiserver")


def require_indiserver() -> None:
    if find_indiserver() is None or shutil.which("indi_simulator_ccd") is None:
        reason = "indiserver and its simulators are not installed (apt-get install -y indi-bin)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must install them (scripts/setup)")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IndiServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "indiserver.log"

    def start(self) -> None:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home)}
        self.proc = subprocess.Popen(
            [
                "indiserver",
                *("-p", str(self.port), "-u", str(self.workdir / f"indi-{self.port}")),
                *DRIVERS,
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"indiserver did not start: {self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the drivers are its children
            self.proc.wait(10)
        self.proc = None


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
