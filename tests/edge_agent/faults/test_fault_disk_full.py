"""The outbox's file system full, then space returns: back-pressure, clear errors, no exit, no
storm of duplicates, and delivery resumes by itself.

The outbox lives on a small tmpfs of its own (the rest of the agent's state elsewhere), so the
kernel answers ENOSPC exactly as a full SD card would. Mounting needs privileges:

* as root (CI runs as root), a tmpfs is mounted for the test (tests/small_filesystem.py);
* otherwise (not root, or root without CAP_SYS_ADMIN as in a container) the agent is started in a user and mount namespace of its own
  (``unshare --user --map-root-user --mount``) where it mounts the tmpfs itself, and the test
  reaches that file system through ``/proc/PID/root``: still the kernel's real ENOSPC,
  no privileges needed where unprivileged user namespaces are allowed;
* where neither is allowed the test is skipped with the reason (SQLite's own SQLITE_FULL
  without privileges, via ``max_page_count``, is covered by tests/edge_agent/test_outbox.py).

``FAULTS_DISK=userns`` forces the namespace way (to prove it where root is available).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_kit import MAX_IN_FLIGHT, AgentProcess, Feeder, Rig, figures, record, tally, wait_until
from small_filesystem import fill, small_filesystem

DISK_BYTES = 16 * 2**20  # the outbox keeps a 4 MiB reserve for deletes when full
BEFORE, DURING = 100, 400  # frames delivered before the fault, frames fed while it lasts


@dataclass
class SmallDisk:
    """A tmpfs for the outbox: ``path`` as the agent sees it, ``wrap`` to start the agent in."""

    path: Path
    wrap: list[str]
    how: str

    def host_path(self, agent: AgentProcess) -> Path:
        """The same folder as this test process sees it."""
        if not self.wrap:
            return self.path
        assert agent.proc is not None
        return Path(f"/proc/{agent.proc.pid}/root") / self.path.relative_to("/")


def _userns_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return None if done.returncode == 0 else done.stderr.strip() or "unshare failed"


@contextmanager
def small_disk(where: Path) -> Iterator[SmallDisk]:
    refused = "not root"
    if os.geteuid() == 0 and os.environ.get("FAULTS_DISK") != "userns":
        with ExitStack() as stack:
            try:
                path = stack.enter_context(small_filesystem(where, DISK_BYTES))
            except pytest.skip.Exception as exc:  # root without CAP_SYS_ADMIN (a container)
                refused = str(exc)
            else:
                yield SmallDisk(path, [], "tmpfs mounted by the test (root)")
                return
    why = _userns_works()
    if why is not None:
        pytest.skip(
            f"cannot mount a tmpfs ({refused}) and no user namespace ({why}); "
            "the outbox's SQLITE_FULL handling is covered by tests/edge_agent/test_outbox.py"
        )
    where.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={DISK_BYTES} tmpfs "$0" && exec "$@"'
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(where)]
    yield SmallDisk(where, wrap, "tmpfs in the agent's own user+mount namespace (no root)")


def _full_lines(agent: AgentProcess) -> list[str]:
    """The agent's log lines about the full outbox (ERROR or WARNING, naming the outbox)."""
    return [
        line
        for line in agent.log().splitlines()
        if line.startswith(("ERROR", "WARNING")) and "outbox" in line and "full" in line
    ]


def test_full_outbox_disk_back_pressure_then_recovery(tmp_path: Path, rig: Rig) -> None:
    broker, consumer = rig.broker, rig.consumer
    with small_disk(tmp_path / "outbox-fs") as disk:
        cfg = rig.config()
        cfg["mqtt"]["outbox"]["path"] = str(disk.path / "outbox.sqlite3")
        agent = rig.start_agent(cfg, wrap=disk.wrap)
        fs = disk.host_path(agent)
        inbox = rig.inbox

        # 1. Normal service.
        first = Feeder(inbox, BEFORE, rate=200.0, prefix="before").start()
        first.finish()
        assert consumer.wait_refs(first.names, 120), agent.log_tail()

        # 2. The broker goes away, results pile up in the outbox, then the disk fills.
        broker.stop()
        second = Feeder(inbox, DURING, rate=200.0, prefix="during").start()
        second.wait_dropped(DURING // 4)
        ballast = fill(fs)
        second.finish()
        # Frames wait (in the folder, the queues); the agent says why, and stays up.
        assert wait_until(lambda: bool(_full_lines(agent)), 60), agent.log_tail()
        assert wait_until(lambda: not agent.alive, 5) is False, agent.log_tail()

        # 3. The broker returns while the disk is still full: what is stored goes out once.
        broker.start()
        spooled_out = wait_until(
            lambda: len(consumer.refs() & set(second.names)) > 0, 120, every=0.2
        )
        partial = tally(consumer, [*first.names, *second.names])
        assert agent.alive, agent.log_tail()

        # 4. Space returns: everything held back is classified and delivered, by itself.
        ballast.unlink()
        delivered = consumer.wait_refs([*first.names, *second.names], 180)
        t = tally(consumer, [*first.names, *second.names])
        alive = agent.alive
        code = agent.stop()
    record(
        "outbox_disk_full",
        {
            "injected": (
                f"outbox on a {DISK_BYTES // 2**20} MiB tmpfs ({disk.how}); broker stopped, "
                "disk filled with ballast mid-stream, broker back while full, then space freed"
            ),
            **figures(t, agent, code),
            "duplicates_while_full": partial.duplicates,
            "delivered_while_full": partial.results_out,
            "errors_messages": len(consumer.bodies("errors")),
            # Reported, not asserted: stats go out only while connected, and the outbox may be
            # writable again before the first stats after the broker's return
            # (tests/edge_agent/test_agent_full_disk.py asserts the field itself).
            "stats_with_outbox_full": sum(
                1 for b in consumer.bodies("stats") if b.get("outbox", {}).get("full")
            ),
            "log_while_full": [line.replace(str(tmp_path), "TMP") for line in _full_lines(agent)][
                :3
            ],
            "agent_starts": agent.starts,
        },
    )
    assert spooled_out, "nothing stored before the disk filled went out while it was full"
    assert delivered and t.lost == 0, (t, agent.log_tail())
    assert alive and agent.starts == 1 and code == 0, agent.log_tail()
    # No storm: a result is sent again only when its PUBACK was lost with a connection.
    assert t.duplicates <= MAX_IN_FLIGHT, t
    assert consumer.bodies("errors") == [], "a good frame was rejected for a full disk"
