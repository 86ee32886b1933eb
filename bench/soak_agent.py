"""Soak: the agent as systemd runs it, fed a steady stream of frames for a long time.

Is its memory flat, and does every frame come out? One private mosquitto on a free loopback
port, one ``edge-agent run`` process watching a folder, one subscriber counting results by id.
Frames (PNG, ``--side`` pixels, 16 distinct pictures) are renamed into the folder at ``--rate``
per second for ``--minutes``; each is deleted once its result has arrived, as an archiver would.
The agent's resident memory is sampled every second; the report gives its median over the first
and the last minute, its peak, and the least-squares slope over the second half of the run
(MiB per hour), with frames in, results out, lost and duplicates.

    .venv/bin/python bench/soak_agent.py --bundle BUNDLE_DIR [--minutes 15] [--rate 40]
        [--side 96] [--out docs/results/soak.json]

BUNDLE_DIR is any agent bundle, e.g. the demo model's:
``.venv/bin/build-engine --checkpoint models/demo --out /tmp/demo-bundle --backend onnxruntime``.
The fault suite (tests/edge_agent/faults, docs/reliability.md) is the short, asserted version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import psutil
import yaml
from agent_harness import start_broker
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.local_run import land, watched_folder_config


class Counter:
    """Results by id and by frame name, from a QoS 1 subscription."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, int] = {}
        self.names: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-counter",
                                  protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        self.client.on_connect = lambda c, *a: c.subscribe("galaxy-edge/soak/classifications", 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            self.ids[body["id"]] = self.ids.get(body["id"], 0) + 1
            self.names.add(Path(body["frame_ref"].rsplit("@", 1)[0]).name)

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=40.0, help="frames per second")
    ap.add_argument("--side", type=int, default=96, help="frame side in pixels")
    ap.add_argument("--out", type=Path, help="write the report as JSON here too")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    root = ["user root"] if os.geteuid() == 0 else []
    broker, port = start_broker(work, options=["max_queued_messages 100000", *root])
    inbox = work / "inbox"
    inbox.mkdir()
    config = watched_folder_config(
        work,
        args.bundle.resolve(),
        port,
        device_id="soak",
        stats_interval_s=10,
        pipeline={"max_wait_ms": 20},
    )
    (work / "agent.yaml").write_text(yaml.safe_dump(config))
    log = (work / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(work / "agent.yaml")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    counter = Counter(port)
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(16):
        img = np.clip(
            rng.integers(0, 256, 3) + rng.normal(0, 40, (args.side, args.side, 3)), 0, 255
        )
        pngs.append(cv2.imencode(".png", img.astype(np.uint8))[1].tobytes())
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
    proc = psutil.Process(agent.pid)
    names: list[str] = []
    pending: list[str] = []
    t0 = time.monotonic()
    next_sample = t0
    try:
        end = t0 + args.minutes * 60
        i = 0
        while time.monotonic() < end:
            if agent.poll() is not None:
                raise RuntimeError(
                    f"the agent exited with {agent.returncode}; see {work}/agent.log"
                )
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, proc.memory_info().rss / 2**20))
                next_sample += 1.0
                seen = counter.seen()
                keep = []
                for name in pending:  # an archiver removes what has been delivered
                    if name in seen:
                        (inbox / name).unlink(missing_ok=True)
                    else:
                        keep.append(name)
                pending = keep
            lag = t0 + i / args.rate - time.monotonic()
            if lag > 0:
                time.sleep(min(lag, 0.2))
                continue
            name = f"f{i:07}.png"
            land(inbox, name, pngs[i % len(pngs)])
            names.append(name)
            pending.append(name)
            i += 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(names) <= counter.seen():
            time.sleep(0.5)
        samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
    finally:
        agent.terminate()
        code = agent.wait(60)
        counter.client.loop_stop()
        broker.terminate()
        broker.wait(10)
    seen = counter.seen()
    with counter.lock:
        messages = sum(counter.ids.values())
        unique = len(counter.ids)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    xs = np.array([s[0] for s in half]) / 3600.0
    ys = np.array([s[1] for s in half])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(half) >= 3 else float("nan")
    report = {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "side": args.side,
        "frames_in": len(names),
        "results_out": unique,
        "lost": len(set(names) - seen),
        "duplicates": messages - unique,
        "rss_first_minute_mib": round(statistics.median(s[1] for s in samples if s[0] < 60), 1),
        "rss_last_minute_mib": round(
            statistics.median(s[1] for s in samples if s[0] >= samples[-1][0] - 60), 1
        ),
        "rss_peak_mib": round(max(s[1] for s in samples), 1),
        "rss_slope_second_half_mib_per_hour": round(slope, 1),
        "agent_exit_code": code,
        "workdir": str(work),
    }
    if report["lost"] == 0 and code == 0:
        shutil.rmtree(work, ignore_errors=True)
        report["workdir"] = None
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["lost"] == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
