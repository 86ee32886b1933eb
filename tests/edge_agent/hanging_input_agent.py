"""``edge-agent run`` in which reading one named input hangs: a stand-in for a crashing decoder.

Test-only (run as a script by tests/edge_agent/test_poison_input.py, never imported by the
agent). The agent is the real one; only :func:`edge_agent.pipeline_prepare.read_regular_file` is
wrapped so that the file named ``HANG_NAME`` never finishes: the hook writes ``MARKER`` (the file
is in flight, its decode counted in the ledger) and sleeps, so the test can SIGKILL the process
with that file certainly in flight, as the watchdog would kill an agent wedged in a decoder bug.

Usage: python hanging_input_agent.py HANG_NAME MARKER edge-agent-arguments...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edge_agent import pipeline_prepare
from edge_agent.cli import main


def hang_on(name: str, marker: Path) -> None:
    real = pipeline_prepare.read_regular_file

    def read(path: Path, max_bytes: int) -> bytes:
        if Path(path).name == name:
            marker.write_text(str(path))
            while True:
                time.sleep(3600)
        return real(path, max_bytes)

    pipeline_prepare.read_regular_file = read


if __name__ == "__main__":
    hang_on(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
