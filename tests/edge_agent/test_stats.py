from __future__ import annotations

import pytest

from edge_agent.stats import LatencySample, LatencyWindow, RateMeter, Stats


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


def test_interval_counts_and_percentiles_cover_only_the_interval() -> None:
    """Version 1 reported rates over a 60 s window and percentiles over the last 4096 frames,
    whatever the stats interval: a slow interval after fast ones was hidden."""
    now = [1000.0]
    s = Stats(clock=lambda: now[0])
    s.frame_in(100)
    s.batch_done([{"total": 10.0}] * 100)
    now[0] += 10.0
    first = s.take_interval()
    assert first.seconds == pytest.approx(10.0)
    assert (first.frames_in, first.frames_out, first.errors) == (100, 100, 0)
    assert first.fps_in == pytest.approx(10.0)
    assert first.latency_ms["total"] == {"p50": 10.0, "p99": 10.0, "max": 10.0}

    s.frame_in(4)
    s.batch_done([{"total": 500.0}] * 4)  # a slow interval after a fast one
    s.error()
    now[0] += 2.0
    second = s.take_interval()
    assert second.seconds == pytest.approx(2.0)
    assert (second.frames_in, second.frames_out, second.errors) == (4, 4, 1)
    assert second.fps_out == pytest.approx(2.0)
    assert second.latency_ms["total"]["p50"] == 500.0  # not diluted by the first 100 frames

    now[0] += 5.0
    idle = s.take_interval()
    assert (idle.frames_in, idle.fps_in, idle.latency_ms) == (0, 0.0, {})
    snap = s.snapshot()  # totals are untouched by the intervals
    assert (snap.frames_in, snap.frames_out, snap.errors) == (104, 104, 1)


def test_latency_sample_is_bounded_and_keeps_the_exact_max() -> None:
    sample = LatencySample(size=256)
    for v in range(100_000):
        sample.add(float(v))
    summary = sample.summary()
    assert len(sample) == 256 and sample.count == 100_000
    assert summary["max"] == 99_999.0
    assert 40_000 < summary["p50"] < 60_000  # uniform over the whole interval, not its tail
    assert LatencySample().summary() == {}
