"""What the fault suite drives and measures: the agent as a process, a feeder, a counting consumer.

* :class:`AgentProcess` runs ``edge-agent run --config`` as systemd would (its own process, a
  notify socket for READY=1, output to a log file so a chatty agent never blocks on a pipe) and
  samples its resident memory with psutil the whole time it lives.
* :class:`Feeder` drops frames into the watched folder the way a careful receiver does (write a
  dotted temporary, rename it into place) at a steady pace, so that faults hit a running stream.
* :class:`Consumer` is the downstream subscriber with a persistent session: it counts every
  classification and error by its ``id`` (what consumers deduplicate on), so a test can state
  frames in, results out, lost and duplicates.
* :class:`Rig` holds one scenario's pieces (folder, bundle, broker, consumer) and starts the
  agent on them;
* :func:`record` writes a scenario's figures to the JSON file named by ``$FAULTS_REPORT``
  (docs/reliability.md is filled from it).

Every wait is bounded and generous: two shared cores under CI load are slow, never instant.
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
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import psutil
from agent_testkit import agent_config, drop_file, galaxy_like
from mqtt_broker import Collector, MosquittoBroker

from edge_agent.local_run import merged

T = "galaxy-edge/dev1/"
REPORT_ENV = "FAULTS_REPORT"
# Small on purpose: the duplicate bounds the suite asserts are multiples of these.
MAX_IN_FLIGHT = 16
MAX_BATCH = 8
# The console script of the interpreter running the tests (the project's venv), else on PATH.
EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
if not EDGE_AGENT.exists():
    EDGE_AGENT = Path(shutil.which("edge-agent") or EDGE_AGENT)


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(every)


def fault_config(
    tmp: Path, bundle: Path, broker: MosquittoBroker, **overrides: Any
) -> dict[str, Any]:
    """The agent's config in every scenario: small window and batches, quick reconnects."""
    cfg = agent_config(
        tmp,
        bundle,
        broker,
        pipeline={"max_batch": MAX_BATCH, "max_wait_ms": 10, "intra_op_threads": 1},
        stats_interval_s=1.0,
        drain_timeout_s=20,
    )
    cfg["mqtt"]["max_in_flight"] = MAX_IN_FLIGHT
    return merged(cfg, overrides)


# --- frames ---------------------------------------------------------------------------------


def small_pngs(count: int = 32, side: int = 24) -> list[bytes]:
    """``count`` distinct small PNG encodings (each dropped file is a frame of its own)."""
    return [cv2.imencode(".png", galaxy_like(i, side, side))[1].tobytes() for i in range(count)]


class Feeder:
    """Drops ``count`` frames ``frame-00000.png`` … into ``inbox`` at ``rate`` per second.

    Runs in a thread; ``dropped`` is how many are in place. ``pause()``/``resume()`` let a test
    hold the stream while it injects a fault at a known point.
    """

    def __init__(self, inbox: Path, count: int, rate: float, prefix: str = "frame") -> None:
        self.inbox = inbox
        self.count = count
        self.rate = rate
        self.prefix = prefix
        self.pngs = small_pngs()
        self.dropped = 0
        self.names: list[str] = []
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        for i in range(self.count):
            self._go.wait()
            if self._stop.is_set():
                return
            # Paced against the clock, not by sleeping a fixed step: a slow moment catches up.
            lag = t0 + i / self.rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            name = f"{self.prefix}-{i:05}.png"
            drop_file(self.inbox, name, self.pngs[i % len(self.pngs)])
            self.names.append(name)
            self.dropped += 1

    def wait_dropped(self, n: int, timeout: float = 120.0) -> bool:
        return wait_until(lambda: self.dropped >= n, timeout)

    def finish(self, timeout: float = 300.0) -> None:
        self._go.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"feeder stuck after {self.dropped} frames"

    def stop(self) -> None:
        self._stop.set()
        self._go.set()


# --- the agent ------------------------------------------------------------------------------


class AgentProcess:
    """``edge-agent run --config CFG`` in its own process; ``log`` is its output so far."""

    def __init__(
        self,
        config: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        self.config = config
        self.wrap = wrap or []  # a command that execs the agent (same pid), e.g. unshare
        self.workdir = workdir
        self.env = env or {}
        self.log_file = workdir / f"{config.stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self.starts = 0
        self.exit_codes: list[int] = []
        self._sock: socket.socket | None = None
        self._notes: list[str] = []
        self._notes_lock = threading.Lock()
        self._sampler: threading.Thread | None = None
        self._rss_stop = threading.Event()

    def start(self) -> AgentProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self._notes_lock:
            self._notes = []
        sock_path = Path(tempfile.mkdtemp(prefix="notify-")) / "n.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        with self.log_file.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*self.wrap, str(EDGE_AGENT), "run", "--config", str(self.config)],
                env={**os.environ, "NOTIFY_SOCKET": str(sock_path), **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        threading.Thread(target=self._listen, args=(self._sock,), daemon=True).start()
        self._rss_stop.clear()
        self._sampler = threading.Thread(target=self._sample, args=(self.proc.pid,), daemon=True)
        self._sampler.start()
        return self

    def _sample(self, pid: int) -> None:
        try:
            p = psutil.Process(pid)
            while not self._rss_stop.is_set():
                self.peak_rss = max(self.peak_rss, p.memory_info().rss)
                self._rss_stop.wait(0.05)
        except psutil.Error:
            return  # the process is gone

    def _listen(self, sock: socket.socket) -> None:
        """Read every notification, as systemd does (a full datagram queue makes the agent warn)."""
        sock.settimeout(0.2)
        while True:
            try:
                note = sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return  # closed when the process was reaped
            with self._notes_lock:
                self._notes.append(note)

    def notes(self) -> list[str]:
        with self._notes_lock:
            return list(self._notes)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Until READY=1 arrives on the notify socket (False if it exits or time runs out)."""
        assert self.proc is not None
        proc = self.proc
        return wait_until(
            lambda: any(n.startswith("READY=1") for n in self.notes()) or proc.poll() is not None,
            timeout,
        ) and any(n.startswith("READY=1") for n in self.notes())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, no last word (the will says offline)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code (the agent drains and flushes first)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._rss_stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.exit_codes.append(code)
        return code

    def close(self) -> None:
        if self.alive:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log()[-n:]


def outbox_depth(path: Path) -> int:
    """Messages in the running agent's outbox, read beside it (a WAL reader never blocks it)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


# --- the consumer ---------------------------------------------------------------------------


class Consumer(Collector):
    """A downstream subscriber with a persistent session that counts results by ``id``."""

    def __init__(self, broker: MosquittoBroker, client_id: str = "fault-consumer") -> None:
        super().__init__(
            broker,
            topic_filter=T + "#",
            persistent_session=True,
            client_id=client_id,
        )

    def bodies(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(T + topic)]

    def result_ids(self) -> Counter[str]:
        return Counter(b["id"] for b in self.bodies("classifications"))

    def refs(self, topic: str = "classifications") -> set[str]:
        """The frame names results were received for (``frame_ref`` without the ``@mtime``)."""
        return {Path(b["frame_ref"].rsplit("@", 1)[0]).name for b in self.bodies(topic)}

    def wait_refs(
        self, names: Iterable[str], timeout: float, topic: str = "classifications"
    ) -> bool:
        want = set(names)
        return wait_until(lambda: want <= self.refs(topic), timeout, every=0.2)


@dataclass
class Tally:
    """Frames in against results out, by the consumer's count."""

    frames_in: int
    results_out: int  # distinct ids received
    messages: int  # every classification message received, duplicates included
    lost: int
    duplicates: int


def tally(consumer: Consumer, names: Iterable[str]) -> Tally:
    want = set(names)
    ids = consumer.result_ids()
    got = consumer.refs()
    return Tally(
        frames_in=len(want),
        results_out=len(ids),
        messages=sum(ids.values()),
        lost=len(want - got),
        duplicates=sum(ids.values()) - len(ids),
    )


# --- a scenario -----------------------------------------------------------------------------


@dataclass
class Rig:
    """One scenario: its folder and bundle, a broker and a consumer already subscribed to it."""

    tmp: Path
    bundle: Path
    broker: MosquittoBroker
    consumer: Consumer
    agent_of: Callable[..., AgentProcess]  # the ``agent_of`` fixture: stops what it started

    @property
    def inbox(self) -> Path:
        return self.tmp / "inbox"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """:func:`fault_config` for this scenario's folder, bundle and broker."""
        return fault_config(self.tmp, self.bundle, self.broker, **overrides)

    def start_agent(
        self, cfg: dict[str, Any] | None = None, wrap: list[str] | None = None
    ) -> AgentProcess:
        """``edge-agent run`` on ``cfg`` (default :meth:`config`), once it has said READY=1."""
        agent = self.agent_of(self.config() if cfg is None else cfg, wrap=wrap)
        assert agent.wait_ready(60), agent.log_tail()
        return agent


# --- the report -----------------------------------------------------------------------------


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` under ``scenario`` into the JSON file ``$FAULTS_REPORT`` (if set)."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[scenario] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def figures(t: Tally, agent: AgentProcess, code: int) -> dict[str, Any]:
    """What every stream scenario reports: its tally, the agent's peak memory and exit code."""
    return {**asdict(t), "peak_rss_mib": mib(agent.peak_rss), "agent_exit_code": code}
