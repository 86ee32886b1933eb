"""Rolling counters and latency percentiles for ``stats`` messages and the systemd STATUS line.

Rates are events per second over a sliding window of one-second buckets (60 s by default), so a
burst shows up at once and fades within the window. Latencies keep the last few thousand values
per stage: percentiles over a bounded window cost the same at hour 1 and at week 3.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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
    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles(self, ps: tuple[float, ...] = (50.0, 99.0)) -> dict[str, float]:
        if not self._values:
            return {}
        values = np.percentile(np.fromiter(self._values, dtype=np.float64), ps)
        return {f"p{p:g}": float(v) for p, v in zip(ps, values, strict=True)}


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


STAGES = ("decode", "queue", "preprocess", "infer", "total")


class Stats:
    """The agent's counters; every method is thread-safe."""

    def __init__(self, window_s: float = 60.0) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.frames_in = RateMeter(window_s)
        self.frames_out = RateMeter(window_s)
        self.errors = 0
        self.batches = 0
        self.latency = {stage: LatencyWindow() for stage in STAGES}

    def frame_in(self, n: int = 1) -> None:
        with self._lock:
            self.frames_in.add(n)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def batch_done(self, latencies_ms: list[dict[str, float]]) -> None:
        with self._lock:
            self.batches += 1
            self.frames_out.add(len(latencies_ms))
            for lat in latencies_ms:
                for stage, value in lat.items():
                    if stage in self.latency:
                        self.latency[stage].add(value)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                uptime_s=time.monotonic() - self.started,
                frames_in=self.frames_in.total,
                frames_out=self.frames_out.total,
                errors=self.errors,
                batches=self.batches,
                fps_in=self.frames_in.rate(),
                fps_out=self.frames_out.rate(),
                latency_ms={s: w.percentiles() for s, w in self.latency.items() if len(w)},
            )
