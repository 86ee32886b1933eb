"""A file that kills the agent while it is processed is quarantined after a bounded number of
tries, and the files behind it are classified: the agent as a process, SIGKILLed for real."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
from agent_testkit import agent_config, galaxy_like, write_config, write_png
from pipeline_testkit import stored_messages

HOOK = Path(__file__).with_name("hanging_input_agent.py")


def spawn(cfg: Path, hang_on: str | None, marker: Path) -> subprocess.Popen[bytes]:
    run = ["run", "--config", str(cfg)]
    argv = [str(HOOK), hang_on, str(marker), *run] if hang_on else ["-m", "edge_agent", *run]
    return subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def ledger_rows(state_dir: Path) -> dict[str, tuple[str, int]]:
    db = sqlite3.connect(f"file:{state_dir / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT path, state, interrupted FROM files").fetchall()
    finally:
        db.close()
    return {Path(p).name: (str(s), int(a)) for p, s, a in rows}


def wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.communicate()[0].decode(errors="replace")[-3000:])


def test_a_file_in_flight_at_each_kill_is_quarantined_after_the_bound(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    raw = agent_config(tmp_path, tiny_bundle, None, pipeline={"poison_after_attempts": 2})
    cfg = write_config(tmp_path / "agent.yaml", raw)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    # A valid image: only its history can make the agent refuse it. Oldest, so taken first.
    poison = write_png(inbox / "poison.png", galaxy_like(0))
    behind = [write_png(inbox / f"behind{i}.png", galaxy_like(i + 1)) for i in range(3)]
    marker = tmp_path / "in-flight"
    for attempt in (1, 2):
        marker.unlink(missing_ok=True)
        proc = spawn(cfg, "poison.png", marker)
        try:
            wait_for(marker.exists, 60, proc)
            assert ledger_rows(state)["poison.png"] == ("seen", attempt)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    # The files behind it never started: the hung decoder held the one prepare thread.
    assert {n: r for n, r in ledger_rows(state).items() if n != "poison.png"} == {
        p.name: ("seen", 0) for p in behind
    }

    # Third start, the real agent (no hook): the file is quarantined unread, the rest go on.
    proc = spawn(cfg, None, marker)
    try:
        wait_for(
            lambda: (
                all(s == "done" for s, _ in ledger_rows(state).values())
                and len(ledger_rows(state)) == 4
            ),
            60,
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    messages = stored_messages(state / "outbox.sqlite3")
    errors = [p for t, p in messages if t.endswith("/errors")]
    classified = {
        Path(p["frame_ref"].rsplit("@", 1)[0]).name
        for t, p in messages
        if t.endswith("/classifications")
    }
    assert classified == {p.name for p in behind}
    (error,) = errors
    assert error["reason"] == "poison" and Path(error["frame_ref"].rsplit("@", 1)[0]) == poison
    assert "stopped 2 times" in error["detail"]
    where = Path(error["quarantined_to"])
    assert not poison.exists() and where.is_relative_to(tmp_path / "quarantine")
    assert where.read_bytes() == cv2.imencode(".png", galaxy_like(0)[:, :, ::-1])[1].tobytes()
    info = json.loads(where.with_name(where.name + ".reason.json").read_text())
    assert info["reason"] == "poison" and info["original"] == str(poison)
    assert ledger_rows(state)["poison.png"][0] == "done"
