"""Progress bars of build-engine: tqdm on stderr (stdout keeps the one result line).

Export, calibration and the accuracy gate each show a bar; a step whose inner progress cannot
be seen (ModelOpt's calibration in its child process) shows a ticking elapsed-time bar, so an
operator watching a build on a Jetson can tell slow from stuck.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


def bar(desc: str, total: int | None, enabled: bool, unit: str = "step") -> tqdm:
    """A tqdm bar on stderr; a disabled one when ``enabled`` is false (its calls do nothing)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
        # Every step is shown: the bars have few steps (export 4, gate one per batch), and a
        # step that ends within tqdm's default 0.1 s would otherwise never say what it did.
        mininterval=0.0,
    )


@contextmanager
def ticking(desc: str, enabled: bool, interval_s: float = 0.5) -> Iterator[None]:
    """An elapsed-time bar refreshed every ``interval_s`` while the ``with`` body runs."""
    if not enabled:
        yield
        return
    shown = tqdm(
        desc=desc,
        file=sys.stderr,
        leave=False,
        bar_format="{desc}: {elapsed} elapsed",
    )
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(interval_s):
            shown.refresh()

    thread = threading.Thread(target=refresh, name="build-engine-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        shown.close()
