"""Counters, rates and latency percentiles for ``stats`` messages and the systemd STATUS line.

Two views of the same events:

* :meth:`Stats.take_interval` is what a ``stats`` message reports: counts, rates and latency
  percentiles over exactly the interval since the previous call (what a dashboard plots: a
  slowdown at hour 30 shows at once, not diluted by 29 good hours). Latencies of an interval
  are a uniform sample of at most :data:`INTERVAL_SAMPLE` values per stage (reservoir
  sampling), plus the exact maximum, so a long interval costs bounded memory.
* :meth:`Stats.snapshot` is the STATUS line's: rates over a sliding window of one-second
  buckets (60 s by default) and percentiles over the last few thousand values, read as often
  as wanted without disturbing the intervals.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50.0, 99.0)
INTERVAL_SAMPLE = 4096


def _percentiles(values: Iterable[float], ps: tuple[float, ...]) -> dict[str, float]:
    array = np.fromiter(values, dtype=np.float64)
    if array.size == 0:
        return {}
    return {f"p{p:g}": float(v) for p, v in zip(ps, np.percentile(array, ps), strict=True)}


class RateMeter:
    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._buckets: deque[list[float]] = deque()  # [second, count]
        self.total = 0

    def add(self, n: int = 1) -> None:
        now = int(self._clock())
        if self._buckets and self._buckets[-1][0] == now:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([now, n])
        self.total += n
        self._trim()

    def _trim(self) -> None:
        cutoff = self._clock() - self.window_s
        while self._buckets and self._buckets[0][0] < cutoff:
            self._buckets.popleft()

    def rate(self) -> float:
        self._trim()
        elapsed = min(self.window_s, max(self._clock() - self._start, 1e-9))
        return sum(c for _, c in self._buckets) / max(elapsed, 1.0)


class LatencyWindow:
    """The last ``size`` values (the STATUS line's percentiles)."""

    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles(self, ps: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
        return _percentiles(self._values, ps)


class LatencySample:
    """A uniform sample of at most ``size`` of the values added (Algorithm R), and their max."""

    def __init__(self, size: int = INTERVAL_SAMPLE, rng: random.Random | None = None) -> None:
        self._size = size
        self._rng = rng or random.Random(0)
        self._values: list[float] = []
        self.count = 0
        self.max = 0.0

    def add(self, value_ms: float) -> None:
        self.count += 1
        self.max = max(self.max, value_ms)
        if len(self._values) < self._size:
            self._values.append(value_ms)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self._size:
                self._values[slot] = value_ms

    def __len__(self) -> int:
        return len(self._values)

    def summary(self, ps: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
        """``{"p50": .., "p99": .., "max": ..}``; empty when nothing was added."""
        if not self._values:
            return {}
        return {**_percentiles(self._values, ps), "max": self.max}


@dataclass(frozen=True)
class Snapshot:
    uptime_s: float
    frames_in: int
    frames_out: int
    errors: int
    batches: int
    fps_in: float
    fps_out: float
    latency_ms: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Interval:
    """What happened between two :meth:`Stats.take_interval` calls (or since the start)."""

    seconds: float
    frames_in: int
    frames_out: int
    errors: int
    latency_ms: dict[str, dict[str, float]]  # stage -> p50, p99, max; stages with frames only

    @property
    def fps_in(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def fps_out(self) -> float:
        return self.frames_out / self.seconds if self.seconds > 0 else 0.0


STAGES = ("decode", "queue", "preprocess", "infer", "total")


class _IntervalCounts:
    def __init__(self, started: float) -> None:
        self.started = started
        self.frames_in = 0
        self.frames_out = 0
        self.errors = 0
        self.latency = {stage: LatencySample() for stage in STAGES}


class Stats:
    """The agent's counters; every method is thread-safe."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.frames_in = RateMeter(window_s, clock)
        self.frames_out = RateMeter(window_s, clock)
        self.errors = 0
        self.batches = 0
        self.latency = {stage: LatencyWindow() for stage in STAGES}
        self._interval = _IntervalCounts(self.started)

    def frame_in(self, n: int = 1) -> None:
        with self._lock:
            self.frames_in.add(n)
            self._interval.frames_in += n

    def error(self) -> None:
        with self._lock:
            self.errors += 1
            self._interval.errors += 1

    def batch_done(self, latencies_ms: list[dict[str, float]]) -> None:
        with self._lock:
            self.batches += 1
            self.frames_out.add(len(latencies_ms))
            self._interval.frames_out += len(latencies_ms)
            for lat in latencies_ms:
                for stage, value in lat.items():
                    if stage in self.latency:
                        self.latency[stage].add(value)
                        self._interval.latency[stage].add(value)

    def snapshot(self) -> Snapshot:
        """Totals, sliding-window rates and recent percentiles; changes nothing."""
        with self._lock:
            return Snapshot(
                uptime_s=self._clock() - self.started,
                frames_in=self.frames_in.total,
                frames_out=self.frames_out.total,
                errors=self.errors,
                batches=self.batches,
                fps_in=self.frames_in.rate(),
                fps_out=self.frames_out.rate(),
                latency_ms={s: w.percentiles() for s, w in self.latency.items() if len(w)},
            )

    def take_interval(self) -> Interval:
        """Counts and percentiles since the previous call (or the start), and start a new one.

        One consumer only (the ``stats`` publisher): a second caller would split the intervals.
        """
        with self._lock:
            now = self._clock()
            done, self._interval = self._interval, _IntervalCounts(now)
        return Interval(
            seconds=now - done.started,
            frames_in=done.frames_in,
            frames_out=done.frames_out,
            errors=done.errors,
            latency_ms={s: w.summary() for s, w in done.latency.items() if len(w)},
        )
