from __future__ import annotations

import threading
import time

from edge_agent.sources.base import Frame, FrameHub


def frame(ref: str, done: list[str] | None = None) -> Frame:
    return Frame(
        source="s", frame_ref=ref, on_done=(lambda: done.append(ref)) if done is not None else None
    )


def test_drop_oldest_counts_and_acks_dropped() -> None:
    hub = FrameHub()
    done: list[str] = []
    q = hub.queue("cam", 2, "drop_oldest")
    for i in range(5):
        assert q.put(frame(str(i), done))
    assert q.dropped == 3 and done == ["0", "1", "2"]
    assert [hub.get(0).frame_ref, hub.get(0).frame_ref] == ["3", "4"]  # type: ignore[union-attr]
    assert hub.get(0) is None
    assert hub.dropped() == {"cam": 3}


def test_block_waits_for_room() -> None:
    hub = FrameHub()
    q = hub.queue("dir", 1, "block")
    assert q.put(frame("a"))
    assert not q.put(frame("b"), timeout=0.05)  # full: times out, nothing dropped
    put_done = threading.Event()
    threading.Thread(target=lambda: (q.put(frame("c")), put_done.set())).start()
    time.sleep(0.05)
    assert not put_done.is_set()
    assert hub.get(1).frame_ref == "a"  # type: ignore[union-attr]
    assert put_done.wait(1)
    assert hub.get(1).frame_ref == "c"  # type: ignore[union-attr]
    assert q.dropped == 0


def test_round_robin_between_sources() -> None:
    hub = FrameHub()
    a, b = hub.queue("a", 10, "block"), hub.queue("b", 10, "block")
    for i in range(3):
        a.put(Frame(source="a", frame_ref=f"a{i}"))
    b.put(Frame(source="b", frame_ref="b0"))
    refs = [hub.get(0).frame_ref for _ in range(4)]  # type: ignore[union-attr]
    assert refs[:2] in (["a0", "b0"], ["b0", "a0"]) and refs[2:] == ["a1", "a2"]


def test_done_called_once() -> None:
    calls: list[int] = []
    f = Frame(source="s", frame_ref="x", on_done=lambda: calls.append(1))
    f.done()
    f.done()
    assert calls == [1]
