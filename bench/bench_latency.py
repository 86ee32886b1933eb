"""Lone-frame latency: from a frame landing to its result at a subscriber, one frame at a time.

For each backend (ONNX Runtime FP32 and OpenVINO, the demo model) and each batching timeout
(``pipeline.max_wait_ms``), the agent runs as systemd starts it behind a private mosquitto, and:

* **lone frames, folder**: one real 256x256 JPEG at a time is renamed into the watched folder
  (landing = the rename); the next one lands ``--interval`` seconds after the previous result
  arrived, so nothing else is ever queued. Latency = arrival of its classification at an MQTT
  subscriber minus landing: inotify, ledger, decode, preprocess, batching, inference, outbox
  commit, publish and delivery are all inside;
* **lone frames, MQTT** (``--mqtt``, default on): the same, published on the agent's ``frames``
  topic (QoS 1) instead; latency from the publish call;
* **bursts**: ``--burst`` frames land at once (renamed in a loop), ``--bursts`` times; per-frame
  latency and the burst's throughput (frames over first landing to last result), which is
  where a longer batching timeout can pay off.

p50 and p99 are over all frames of a kind (with few frames p99 is close to the maximum).

    .venv/bin/python bench/bench_latency.py [--frames 30] [--max-wait 0 20 100]
        [--backends onnxruntime openvino:fp32 openvino:bf16]

Not a test: it prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import demo_models
import numpy as np
from agent_harness import AgentProcess, Subscriber, start_broker, when


def percentiles(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _wait(sub: Subscriber, agent: AgentProcess, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not sub.wait_for(count, 0.5):
        if not agent.alive() or time.monotonic() > deadline:
            raise SystemExit("bench_latency: the agent stopped or stalled")


def _by_ref(sub: Subscriber) -> dict[str, tuple[dict[str, Any], float]]:
    out = {}
    for body, at in sub.results():
        name = Path(body["frame_ref"].rsplit("@", 1)[0]).name
        out[name] = (body, at)
    return out


def _parts(body: dict[str, Any], landed: float, at: float) -> dict[str, float]:
    """Where a frame's time went (ms): to the agent, inside it (its ``total``), to the consumer."""
    return {
        "e2e": 1e3 * (at - landed),
        "to_agent": 1e3 * (when(body["received_at"]) - landed),
        "agent": body["latency_ms"]["total"],
        "queue": body["latency_ms"]["queue"],
        "infer": body["latency_ms"]["infer"],
        "to_consumer": 1e3 * (at - when(body["classified_at"])),
    }


def _lone(
    agent: AgentProcess,
    sub: Subscriber,
    images: list[Path],
    tag: str,
    interval: float,
    send: Callable[[Path, str], float],
) -> list[dict[str, float]]:
    """Where each lone frame's time went, from ``send(image, name)`` (it returns when it sent)
    to its result's arrival (see :func:`_parts`)."""
    out = []
    for i, src in enumerate(images):
        name = f"{tag}-{i:04}.jpg"
        count = len(sub.results()) + 1
        sent = send(src, name)
        _wait(sub, agent, count)
        body, at = _by_ref(sub)[name]
        out.append(_parts(body, sent, at))
        time.sleep(interval)
    return out


def lone_folder(
    agent: AgentProcess, sub: Subscriber, images: list[Path], tag: str, interval: float
) -> list[dict[str, float]]:
    """Lone frames landed in the watched folder, timed from the rename."""
    return _lone(agent, sub, images, tag, interval, agent.land)


def lone_mqtt(
    agent: AgentProcess, sub: Subscriber, images: list[Path], tag: str, interval: float
) -> list[dict[str, float]]:
    """Lone frames published on the ``frames`` topic, timed from the publish."""

    def publish(src: Path, name: str) -> float:
        data = src.read_bytes()
        sent = time.time()
        sub.publish_frame(data, name)
        return sent

    return _lone(agent, sub, images, tag, interval, publish)


def bursts(
    agent: AgentProcess, sub: Subscriber, images: list[Path], tag: str, size: int, count: int
) -> tuple[list[float], list[float]]:
    """Per-frame latency (ms) and per-burst throughput (frames/s)."""
    lat, rates = [], []
    for b in range(count):
        names = [f"{tag}-b{b}-{i:03}.jpg" for i in range(size)]
        srcs = [images[(b * size + i) % len(images)] for i in range(size)]
        for name, src in zip(names, srcs, strict=True):
            (agent.staging / name).write_bytes(src.read_bytes())
        want = len(sub.results()) + size
        landed = {}
        for name in names:
            landed[name] = time.time()
            os.replace(agent.staging / name, agent.inbox / name)
        _wait(sub, agent, want)
        got = _by_ref(sub)
        arrivals = [got[n][1] for n in names]
        lat += [1e3 * (got[n][1] - landed[n]) for n in names]
        rates.append(size / (max(arrivals) - min(landed.values())))
        time.sleep(0.5)
    return lat, rates


def run_backend(
    backend: str, bundle: Path, work: Path, args: argparse.Namespace, images: list[Path]
) -> list[dict[str, Any]]:
    rows = []
    for max_wait in args.max_wait:
        broker, port = start_broker(work / f"broker-{backend}-{max_wait:g}")
        agent = AgentProcess(
            bundle,
            work / f"agent-{backend}-{max_wait:g}",
            port=port,
            batch=args.batch,
            max_wait_ms=max_wait,
            threads=args.threads,
            mqtt_frames=args.mqtt,
            streams=args.agent_streams,
        )
        sub = Subscriber(port)
        try:
            time.sleep(1.0)  # the agent's MQTT session and the subscription are up
            # warm-up: the first frames pay for lazy set-up (allocations, page faults)
            lone_folder(agent, sub, images[:3], "warm", 0.1)
            lone = lone_folder(agent, sub, images[: args.frames], "lone", args.interval)
            via_mqtt = (
                lone_mqtt(agent, sub, images[: args.frames], "mqtt", args.interval)
                if args.mqtt
                else []
            )
            burst_lat, rates = bursts(agent, sub, images, "burst", args.burst, args.bursts)
        finally:
            agent.stop()
            sub.stop()
            broker.terminate()
            broker.wait(10)
        rows.append(
            {
                "backend": backend,
                "max_wait": max_wait,
                "lone": {k: percentiles([d[k] for d in lone]) for k in lone[0]},
                "mqtt": {k: percentiles([d[k] for d in via_mqtt]) for k in via_mqtt[0]}
                if via_mqtt
                else None,
                "burst": percentiles(burst_lat),
                "burst_rate": statistics.median(rates),
            }
        )
        print(f"# {backend} max_wait {max_wait:g}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backends",
        nargs="*",
        default=["onnxruntime", "openvino:fp32", "openvino:bf16"],
        help="onnxruntime or openvino[:fp32|bf16|int8]",
    )
    p.add_argument("--max-wait", nargs="*", type=float, default=[0.0, 20.0, 100.0])
    p.add_argument("--frames", type=int, default=30, help="lone frames per kind")
    p.add_argument("--interval", type=float, default=0.3, help="s from a result to the next")
    p.add_argument("--burst", type=int, default=16, help="frames per burst")
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="pipeline.max_batch")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all)")
    p.add_argument("--mqtt", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/galaxy-edge-bench"))
    p.add_argument("--agent-streams", type=int, default=None, help="pipeline.inference_streams")
    args = p.parse_args(argv)
    art = demo_models.prepare(args.work)
    images = art.heldout_files
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        for target in map(demo_models.parse_target, args.backends):
            bundle = demo_models.make_bundle(
                work / f"bundle-{target.key}",
                target.onnx(art),
                target.backend,
                precision=target.precision,
                max_batch=args.batch,
            )
            backend, label = target.key, target.label
            for row in run_backend(backend, bundle, work, args, images):
                row["label"] = label
                rows.append(row)
    print(
        f"\n{art.model_name} (models/demo), real 256x256 JPEGs, {os.cpu_count()} CPUs, "
        f"{args.frames} lone frames per kind ({args.interval:g} s between a result and the next "
        f"frame), {args.bursts} bursts of {args.burst}, max_batch {args.batch}; through "
        f"mosquitto, measured at a subscriber; started {started}, load average "
        f"{load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
        + (f"; agent inference_streams {args.agent_streams}" if args.agent_streams else "")
    )
    print(
        "\n| backend | max_wait_ms | lone, folder p50 / p99 ms | lone, MQTT p50 / p99 ms "
        "| burst p50 / p99 ms | burst img/s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        mq = f"{r['mqtt']['e2e'][0]:.0f} / {r['mqtt']['e2e'][1]:.0f}" if r["mqtt"] else "-"
        print(
            f"| {r['label']} | {r['max_wait']:g} | {r['lone']['e2e'][0]:.0f} / "
            f"{r['lone']['e2e'][1]:.0f} | {mq} | {r['burst'][0]:.0f} / {r['burst'][1]:.0f} "
            f"| {r['burst_rate']:.1f} |"
        )
    print(
        "\nWhere a lone frame's time goes, p50 ms (p99): landing -> the agent's received_at "
        "(inotify or MQTT delivery, ledger) | inside the agent (its latency_ms.total) | of which "
        "queue (waiting for decode and for a batch) | of which infer | classified_at -> arrival "
        "at the subscriber (outbox commit, publish, broker)\n"
    )
    print("| backend | max_wait_ms | input | to agent | in agent | queue | infer | to consumer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for kind in ("lone", "mqtt"):
            parts = r[kind]
            if not parts:
                continue
            cells = " | ".join(
                f"{parts[k][0]:.1f} ({parts[k][1]:.1f})"
                for k in ("to_agent", "agent", "queue", "infer", "to_consumer")
            )
            what = "folder" if kind == "lone" else "MQTT"
            print(f"| {r['label']} | {r['max_wait']:g} | {what} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
