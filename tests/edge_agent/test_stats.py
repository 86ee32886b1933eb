from __future__ import annotations

import pytest

from edge_agent.stats import LatencyWindow, RateMeter, Stats


def test_rate_window() -> None:
    now = [100.0]
    meter = RateMeter(window_s=10, clock=lambda: now[0])
    for _ in range(20):
        meter.add()
    now[0] += 10.0
    assert meter.rate() == pytest.approx(2.0)
    now[0] += 11.0
    assert meter.rate() == 0.0 and meter.total == 20


def test_percentiles_bounded_window() -> None:
    w = LatencyWindow(size=100)
    for v in range(1000):
        w.add(float(v))
    p = w.percentiles()
    assert len(w) == 100 and p["p50"] == pytest.approx(949.5) and p["p99"] > 990


def test_stats_snapshot() -> None:
    s = Stats()
    s.frame_in(3)
    s.batch_done([{"infer": 2.0, "total": 5.0}, {"infer": 2.0, "total": 7.0}])
    s.error()
    snap = s.snapshot()
    assert (snap.frames_in, snap.frames_out, snap.errors, snap.batches) == (3, 2, 1, 1)
    assert snap.latency_ms["total"]["p50"] == pytest.approx(6.0)
    assert "decode" not in snap.latency_ms
