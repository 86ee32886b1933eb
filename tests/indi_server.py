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

from required_tools import missing

from edge_agent.local_run import free_port

DRIVERS = ("indi_simulator_telescope", "indi_simulator_ccd")


def find_indiserver() -> str | None:
    return shutil.which("indiserver")


def require_indiserver() -> None:
    if find_indiserver() is None or shutil.which("indi_simulator_ccd") is None:
        missing("indiserver and its simulators are not installed (apt-get install -y indi-bin)")


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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"indiserver exited: {self.log.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.1)
        self._wait_for_drivers(deadline)

    def _wait_for_drivers(self, deadline: float) -> None:
        """Return once every driver has defined its CONNECTION property.

        indiserver accepts clients before its drivers have started; a command for a device it
        does not know yet is dropped, so a test that connected the camera too early would wait
        for nothing (seen on a loaded machine).
        """
        from edge_agent.sources.indi_protocol import IndiConnection, IndiElement, get_properties

        ready: set[str] = set()

        def on(element: IndiElement) -> None:
            if element.tag.startswith("def") and element.name == "CONNECTION":
                ready.add(element.device)

        while time.monotonic() < deadline:
            conn = IndiConnection("127.0.0.1", self.port, on, max_blob_bytes=1 << 20)
            try:
                conn.send(get_properties())
                until = min(deadline, time.monotonic() + 2.0)
                while len(ready) < len(DRIVERS) and time.monotonic() < until:
                    conn.pump(0.1)
            finally:
                conn.close()
            if len(ready) >= len(DRIVERS):
                return
        raise RuntimeError(
            f"indiserver's drivers did not start (ready: {sorted(ready)}): "
            f"{self.log.read_text(errors='replace')}"
        )

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
