"""The edge agent's throughput against bare ONNX Runtime on the same model and batch size.

One run measures, on this machine:

* bare ONNX Runtime: ``session.run`` on already preprocessed batches (no decode, no I/O), with
  the agent's session options (worker spinning off) and with ORT's defaults (spinning on);
* the agent, as systemd runs it (``python -m edge_agent run``): a burst of JPEGs renamed into
  its watched folder is decoded, preprocessed, batched, classified and written to the outbox.
  Throughput is frames over (last ``classified_at`` - first ``received_at``) of the payloads;
* the two alternate for ``--rounds`` rounds (bare, agent, bare), so both see the same machine
  (on a shared host other jobs come and go); the median of the per-round ratios is reported,
  with the CPU time per frame of each, which other jobs disturb far less than wall time;
* per-stage latency p50/p99 from the payloads, the agent's peak RSS, and the time from process
  start to READY=1 on a notify socket (interpreter, imports, bundle hashing, session, warm-up).

With ``--broker`` (the default) a private mosquitto runs on a free loopback port and the
figures are taken where a consumer sees them: a frame counts once its classification arrived at
a subscriber, so outbox commit, publishing and PUBACK are inside the measurement. With
``--no-broker`` the results stay in the outbox, which is read while the agent runs.
The model is ``mobilevit_s`` (random weights unless ``--checkpoint`` is given: weights do not
change the cost), exported to ONNX with a dynamic batch axis.

    .venv/bin/python bench/bench_agent.py [--checkpoint RUN_DIR] [--frames 48] [--rounds 3] [--batch 8]
        [--no-broker]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.contract.decode import decode_file
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.manifest import (
    Manifest,
    ModelInfo,
    official_classes,
    sha256_file,
    write_manifest,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC, preprocess_batch

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "galaxy10-sample"


def export_model(out: Path, checkpoint: Path | None) -> str:
    import torch

    torch.set_num_threads(2)
    if checkpoint is not None:
        from training.checkpoint import load_for_export

        exportable = load_for_export(checkpoint)
        model, name = exportable.model, exportable.model_name
    else:
        import timm

        model, name = (
            timm.create_model("mobilevit_s", num_classes=10, pretrained=False),
            "mobilevit_s",
        )
    model.eval()
    x = torch.zeros(2, 3, DEFAULT_SPEC.input_size, DEFAULT_SPEC.input_size)
    torch.onnx.export(
        model, (x,), str(out), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return name


def make_bundle(bundle: Path, checkpoint: Path | None, max_batch: int) -> Manifest:
    bundle.mkdir(parents=True)
    name = export_model(bundle / "model.onnx", checkpoint)
    manifest = Manifest.model_validate({
        "created": datetime.now(timezone.utc).isoformat(),
        "builder": "bench_agent",
        "model": ModelInfo(name=name, classes=official_classes()),
        "preprocess": DEFAULT_SPEC,
        "backend": "onnxruntime",
        "precision": "fp32",
        "model_file": "model.onnx",
        "source_onnx_sha256": sha256_file(bundle / "model.onnx"),
        "batch": {"min": 1, "opt": max_batch, "max": max(16, max_batch)},
    })  # fmt: skip
    return write_manifest(bundle, manifest)


def pick_images(n: int) -> list[Path]:
    files = sorted(SAMPLE.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"bench_agent: no JPEGs under {SAMPLE}; pass --images FOLDER")
    return [files[i % len(files)] for i in range(n)]


class BareOrt:
    """Plain ``session.run`` on preprocessed batches: what the agent's throughput is held to."""

    def __init__(self, bundle: Path, images: list[Path], batch: int, threads: int) -> None:
        import onnxruntime as ort

        self.sessions = {}
        for spinning in (False, True):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if spinning else "0"
            )
            self.sessions[spinning] = ort.InferenceSession(
                str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
        frames = [decode_file(p, DecodeConfig()) for p in images]
        self.batches = [
            preprocess_batch(frames[i : i + batch]) for i in range(0, len(frames), batch)
        ]
        self.frames = len(frames)
        for session in self.sessions.values():
            session.run(["logits"], {"input": self.batches[0]})  # warm-up

    def run(self, spinning: bool) -> tuple[float, float]:
        """Frames per second and CPU milliseconds per frame (this process, all threads)."""
        session = self.sessions[spinning]
        t0, c0 = time.perf_counter(), time.process_time()
        for b in self.batches:
            session.run(["logits"], {"input": b})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return self.frames / wall, 1e3 * cpu / self.frames


def _outbox_bodies(outbox: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT payload FROM messages WHERE topic LIKE '%/classifications'"
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


class Subscriber:
    """A consumer of the agent's classifications: each payload with its arrival time."""

    def __init__(self, port: int) -> None:
        self.bodies: list[tuple[dict[str, Any], float]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        self.client.on_connect = lambda c, *_: c.subscribe("galaxy-edge/bench/classifications", 1)
        self.client.on_message = lambda _c, _u, m: self.bodies.append(
            (json.loads(m.payload), time.time())
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def unique(self) -> dict[str, tuple[dict[str, Any], float]]:
        """First arrival of each classification id (QoS 1 may deliver twice)."""
        first: dict[str, tuple[dict[str, Any], float]] = {}
        for body, at in list(self.bodies):
            first.setdefault(body["id"], (body, at))
        return first

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        raise SystemExit("bench_agent: mosquitto not found (scripts/setup); or use --no-broker")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    return proc, port


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AgentProcess:
    """``edge-agent run`` as systemd starts it, fed in rounds through its watched folder."""

    def __init__(
        self, bundle: Path, work: Path, batch: int, threads: int, port: int | None
    ) -> None:
        self.work = work
        self.subscriber = Subscriber(port) if port is not None else None
        self.inbox = work / "inbox"
        self.inbox.mkdir(parents=True)
        self.outbox = work / "outbox.sqlite3"
        config = {
            "device_id": "bench",
            "bundle": str(bundle),
            "sources": [{"uri": f"dir://{self.inbox}", "name": "inbox", "queue_size": 64}],
            "pipeline": {"max_batch": batch, "max_wait_ms": 50, "intra_op_threads": threads},
            "quarantine_dir": str(work / "quarantine"),
            "state_dir": str(work / "state"),
            "stats_interval_s": 3600,
            "drain_timeout_s": 3,
            "log_level": "WARNING",
            # Without a broker, port 9 (discard): every result stays in the outbox, read here.
            "mqtt": {
                "host": "127.0.0.1",
                "port": 9 if port is None else port,
                "outbox": {"path": str(self.outbox)},
            },
        }
        (work / "agent.yaml").write_text(yaml.safe_dump(config))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(work / "notify.sock"))
        sock.settimeout(120)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(work / "agent.yaml")],
            env={**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock")},
        )
        while not sock.recv(4096).startswith(b"READY=1"):
            pass
        self.ready_s = time.monotonic() - t0
        # Kept open until stop(): the agent goes on sending WATCHDOG and STATUS.
        self.notify_sock = sock
        self.done = 0

    def round(self, images: list[Path], tag: str) -> tuple[float, float]:
        """Drop ``images`` (renamed into place), wait for their results.

        Returns frames per second and the agent's CPU milliseconds per frame.
        """
        cpu0 = sum(psutil.Process(self.proc.pid).cpu_times()[:2])
        staging = self.work / f"staging-{tag}"
        staging.mkdir()
        names = []
        for i, src in enumerate(images):
            shutil.copyfile(src, staging / f"{tag}-{i:05}.jpg")
            names.append(f"{tag}-{i:05}.jpg")
        for name in names:
            os.replace(staging / name, self.inbox / name)
        self.done += len(images)
        deadline = time.monotonic() + 900
        while len(self.results()) < self.done:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("bench_agent: the agent stopped or stalled")
            time.sleep(0.05)
        cpu = sum(psutil.Process(self.proc.pid).cpu_times()[:2]) - cpu0
        mine = [(b, at) for b, at in self.results() if f"/{tag}-" in b["frame_ref"]]
        start = min(_when(b["received_at"]) for b, _ in mine)
        end = max(at for _, at in mine)
        return len(mine) / (end - start), 1e3 * cpu / len(mine)

    def results(self) -> list[tuple[dict[str, Any], float]]:
        """Each classification with when it was done: arrival at the subscriber with a broker,
        else its ``classified_at`` (committed to the outbox)."""
        if self.subscriber is not None:
            return list(self.subscriber.unique().values())
        return [(b, _when(b["classified_at"])) for b in _outbox_bodies(self.outbox)]

    def peak_rss_mb(self) -> float:
        # VmHWM of the agent's own image: ru_maxrss of a child would count the pages of this
        # (torch-laden) process that it shared between fork and exec.
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; ``stop_s`` is the time to exit (None: killed at 60 s)."""
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            self.proc.wait(60)
            self.stop_s: float | None = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.stop_s = None
        self.notify_sock.close()
        if self.subscriber is not None:
            self.subscriber.stop()

    def latencies(self) -> dict[str, tuple[float, float]]:
        bodies = [b for b, _ in self.results()]
        out = {}
        for stage in ("decode", "queue", "preprocess", "infer", "total"):
            values = np.array([b["latency_ms"][stage] for b in bodies])
            out[stage] = (float(np.percentile(values, 50)), float(np.percentile(values, 99)))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="galaxy-train run dir or .safetensors")
    parser.add_argument("--frames", type=int, default=48, help="frames per round")
    parser.add_argument("--rounds", type=int, default=3, help="bare/agent pairs, interleaved")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--broker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="publish through a private mosquitto and measure at a subscriber (default)",
    )
    args = parser.parse_args(argv)
    rows: list[tuple[float, float, float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        manifest = make_bundle(work / "bundle", args.checkpoint, args.batch)
        images = pick_images(args.frames)
        bare = BareOrt(work / "bundle", images, args.batch, args.threads)
        broker, port = start_broker(work) if args.broker else (None, None)
        agent = AgentProcess(work / "bundle", work / "agent", args.batch, args.threads, port)
        try:
            # Each agent round sits between two bare runs with the agent's session options, so
            # both see the same machine (on a shared host other jobs come and go).
            for r in range(args.rounds):
                before, bare_cpu = bare.run(spinning=False)
                fps, agent_cpu = agent.round(images, f"r{r}")
                after, _ = bare.run(spinning=False)
                spin, _ = bare.run(spinning=True)
                rows.append(((before + after) / 2, spin, fps, fps / ((before + after) / 2),
                             bare_cpu, agent_cpu))  # fmt: skip
            rss = agent.peak_rss_mb()
            latency = agent.latencies()
        finally:
            agent.stop()
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    print(
        f"model {manifest.model.name} ({'checkpoint' if args.checkpoint else 'random weights'}), "
        f"{args.frames} JPEGs 256x256 per round, {args.rounds} rounds, batch {args.batch}, "
        f"{args.threads} ORT threads, {os.cpu_count()} CPUs, "
        f"{'through mosquitto, measured at a subscriber' if args.broker else 'no broker (outbox)'}\n"
    )
    print(
        "| round | bare ORT img/s | bare ORT img/s (ORT defaults) | edge-agent img/s "
        "| agent / bare | CPU ms/frame bare | CPU ms/frame agent |"
    )
    print("|---|---|---|---|---|---|---|")
    for r, row in enumerate(rows):
        b, bs, a, q, cb, ca = row
        print(f"| {r} | {b:.2f} | {bs:.2f} | {a:.2f} | {100 * q:.1f} % | {cb:.0f} | {ca:.0f} |")
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"| median | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {100 * med[3]:.1f} % "
        f"(goal >= 90 %) | {med[4]:.0f} | {med[5]:.0f} |\n"
    )
    stop = f"{agent.stop_s:.2f} s" if agent.stop_s is not None else "over 60 s (killed)"
    print(
        f"start to READY=1: {agent.ready_s:.2f} s; SIGTERM to exit: {stop}; "
        f"agent peak RSS: {rss:.0f} MiB\n"
    )
    print("| stage (all rounds) | p50 ms | p99 ms |\n|---|---|---|")
    for stage, (p50, p99) in latency.items():
        print(f"| {stage} | {p50:.1f} | {p99:.1f} |")
    print("\nqueue and total include the wait behind the frames of the same round (a burst).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
