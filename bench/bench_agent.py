"""The edge agent's throughput against the FASTEST bare configuration of its runtime.

For each backend (ONNX Runtime FP32, OpenVINO FP32 and BF16 by default, the demo model
``models/demo`` made the way ``build-engine`` makes it), one run measures on this machine:

* the runtime alone, on already decoded and preprocessed batches of the agent's batch size (no
  decode, no I/O), in every configuration worth trying, and takes the fastest of them:
  ONNX Runtime with its defaults (worker threads spin) and with spinning off; OpenVINO with the
  agent's compile settings (LATENCY hint, one stream, pinning off), with pinning on, and with the
  THROUGHPUT hint (several streams, an async request queue);
* the agent as systemd runs it (``python -m edge_agent run``, with its defaults unless an option
  says otherwise): a burst of real JPEGs renamed into its watched folder is decoded,
  preprocessed, batched, classified, committed to the outbox and published through a private
  mosquitto; a frame counts once its classification arrived at a subscriber. Throughput is
  frames over (last arrival - first ``received_at``);
* bare and agent alternate for ``--rounds`` rounds (bare, agent, bare), so both see the same
  machine; the reported ratio is the median of the per-round ratios agent / fastest bare, with
  the CPU time per frame of each (which other jobs disturb far less than wall time);
* per-stage latency p50/p99 from the payloads, the agent's peak RSS, start to READY=1 and
  SIGTERM to exit.

    .venv/bin/python bench/bench_agent.py [--rounds 5] [--frames 64] [--batch 8]
        [--backends onnxruntime openvino:fp32 openvino:bf16] [--agent-streams 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import demo_models
import numpy as np
from agent_harness import AgentProcess, Subscriber, start_broker, when

from edge_agent.contract.decode import decode_file
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch


def _ort_runners(onnx: Path, threads: int) -> dict[str, Callable[[list[np.ndarray]], None]]:
    import onnxruntime as ort

    runners = {}
    for label, spinning in (("ORT defaults (spinning)", True), ("ORT spinning off", False)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(batches: list[np.ndarray], s: Any = session, n: str = name) -> None:
            for b in batches:
                s.run(None, {n: b})

        runners[label] = run
    # Parts of each batch at once, one thread each: what pipeline.inference_streams does.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads // 2)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    part_session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    pool = ThreadPoolExecutor(2)

    def run_parts(batches: list[np.ndarray], s: Any = part_session) -> None:
        n = s.get_inputs()[0].name
        for b in batches:
            futures = [pool.submit(s.run, None, {n: p}) for p in np.array_split(b, 2)]
            for f in futures:
                f.result()

    runners["ORT 2 streams (batch in 2 parts)"] = run_parts
    return runners


def _ov_runners(
    onnx: Path, hint: str, threads: int
) -> dict[str, Callable[[list[np.ndarray]], None]]:
    import openvino as ov

    from edge_agent.backends.openvino_backend import compile_config

    core = ov.Core()
    model = core.read_model(str(onnx))
    runners = {}
    configs = {
        "OV agent settings (LATENCY, 1 stream, unpinned)": compile_config(hint, threads),
        "OV LATENCY, pinned": {**compile_config(hint, threads), "ENABLE_CPU_PINNING": True},
    }
    for label, config in configs.items():
        request = core.compile_model(model, "CPU", config).create_infer_request()

        def run(batches: list[np.ndarray], r: Any = request) -> None:
            for b in batches:
                r.infer({0: b})

        runners[label] = run
    tput = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads,
        },
    )
    streams = int(tput.get_property("NUM_STREAMS"))
    queue = ov.AsyncInferQueue(tput, int(tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def run_async(batches: list[np.ndarray]) -> None:
        for b in batches:
            queue.start_async({0: b})
        queue.wait_all()

    runners[f"OV THROUGHPUT ({streams} streams, async)"] = run_async
    # Each batch in two parts on a 2-stream model: what pipeline.inference_streams does.
    parted = core.compile_model(
        model,
        "CPU",
        {**compile_config(hint, threads), "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2},
    )
    parts = [parted.create_infer_request() for _ in range(2)]

    def run_parts(batches: list[np.ndarray]) -> None:
        for b in batches:
            for request, p in zip(parts, np.array_split(b, 2), strict=True):
                request.start_async({0: p})
            for request in parts:
                request.wait()

    runners["OV 2 streams (batch in 2 parts)"] = run_parts
    return runners


class Bare:
    """The runtime alone on preprocessed batches, in each configuration; the fastest wins."""

    def __init__(
        self,
        backend: str,
        onnx: Path,
        hint: str,
        images: list[Path],
        spec: PreprocessSpec,
        batch: int,
        threads: int,
    ) -> None:
        frames = [decode_file(p, DecodeConfig()) for p in images]
        self.batches = [
            preprocess_batch(frames[i : i + batch], spec) for i in range(0, len(frames), batch)
        ]
        self.frames = len(frames)
        self.runners = (
            _ort_runners(onnx, threads)
            if backend == "onnxruntime"
            else _ov_runners(onnx, hint, threads)
        )
        for run in self.runners.values():
            run(self.batches[:2])  # warm-up

    def run(self, label: str) -> tuple[float, float]:
        """Frames per second and CPU ms per frame (this process, all threads) of ``label``."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.runners[label](self.batches)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return self.frames / wall, 1e3 * cpu / self.frames


def agent_round(
    agent: AgentProcess, sub: Subscriber, images: list[Path], tag: str
) -> tuple[float, float]:
    """Drop ``images`` at once; frames per second at the subscriber and agent CPU ms per frame."""
    cpu0 = agent.cpu_s()
    names = [f"{tag}-{i:05}.jpg" for i in range(len(images))]
    for name, src in zip(names, images, strict=True):
        (agent.staging / name).write_bytes(src.read_bytes())
    want = len(sub.results()) + len(images)
    for name in names:
        os.replace(agent.staging / name, agent.inbox / name)
    deadline = time.monotonic() + 900
    while not sub.wait_for(want, 0.5):
        if time.monotonic() > deadline or not agent.alive():
            raise SystemExit("bench_agent: the agent stopped or stalled")
    cpu = agent.cpu_s() - cpu0
    mine = [(b, at) for b, at in sub.results() if f"/{tag}-" in b["frame_ref"]]
    start = min(when(b["received_at"]) for b, _ in mine)
    end = max(at for _, at in mine)
    return len(mine) / (end - start), 1e3 * cpu / len(mine)


def latencies(sub: Subscriber) -> dict[str, tuple[float, float]]:
    bodies = [b for b, _ in sub.results()]
    out = {}
    for stage in ("decode", "queue", "preprocess", "infer", "total"):
        values = np.array([b["latency_ms"][stage] for b in bodies])
        out[stage] = (float(np.percentile(values, 50)), float(np.percentile(values, 99)))
    return out


def measure(
    backend: str,
    bundle: Path,
    bare: Bare,
    work: Path,
    images: list[Path],
    args: argparse.Namespace,
    streams: int | None,
) -> dict[str, Any]:
    broker, port = start_broker(work / "broker")
    agent = AgentProcess(
        bundle,
        work / "agent",
        port=port,
        batch=args.batch,
        max_wait_ms=args.max_wait,
        threads=args.agent_threads,
        spinning=args.agent_spinning,
        streams=streams,
    )
    sub = Subscriber(port)
    rows = []
    try:
        time.sleep(1.0)
        agent_round(agent, sub, images[: args.batch * 2], "warm")
        for r in range(args.rounds):
            before = {label: bare.run(label) for label in bare.runners}
            fps, agent_cpu = agent_round(agent, sub, images, f"r{r}")
            after = {label: bare.run(label) for label in bare.runners}
            per_config = {
                label: ((before[label][0] + after[label][0]) / 2, before[label][1])
                for label in bare.runners
            }
            best = max(per_config, key=lambda k: per_config[k][0])
            rows.append(
                {
                    "bare": {k: v[0] for k, v in per_config.items()},
                    "best": best,
                    "best_fps": per_config[best][0],
                    "best_cpu": per_config[best][1],
                    "agent_fps": fps,
                    "agent_cpu": agent_cpu,
                    "ratio": fps / per_config[best][0],
                }
            )
            print(
                f"# {backend} round {r}: agent {fps:.1f} img/s, best bare {best} "
                f"{per_config[best][0]:.1f}: {100 * rows[-1]['ratio']:.1f}%",
                file=sys.stderr,
                flush=True,
            )
        rss = agent.peak_rss_mb()
        lat = latencies(sub)
    finally:
        agent.stop()
        sub.stop()
        broker.terminate()
        broker.wait(10)
    return {
        "rows": rows,
        "rss": rss,
        "latency": lat,
        "ready_s": agent.ready_s,
        "stop_s": agent.stop_s,
    }


def report(label: str, result: dict[str, Any]) -> None:
    rows = result["rows"]
    configs = list(rows[0]["bare"])
    print(f"\n### {label}\n")
    print(
        "| round | "
        + " | ".join(f"bare: {c} img/s" for c in configs)
        + " | agent img/s | agent / fastest bare | CPU ms/frame bare (fastest) | agent |"
    )
    print("|---" * (len(configs) + 5) + "|")
    for r, row in enumerate(rows):
        print(
            f"| {r} | "
            + " | ".join(f"{row['bare'][c]:.2f}" for c in configs)
            + f" | {row['agent_fps']:.2f} | {100 * row['ratio']:.1f}% | {row['best_cpu']:.0f} "
            f"| {row['agent_cpu']:.0f} |"
        )
    med = {c: statistics.median(row["bare"][c] for row in rows) for c in configs}
    print(
        "| **median** | "
        + " | ".join(f"{med[c]:.2f}" for c in configs)
        + f" | {statistics.median(r['agent_fps'] for r in rows):.2f} "
        f"| **{100 * statistics.median(r['ratio'] for r in rows):.1f}%** "
        f"| {statistics.median(r['best_cpu'] for r in rows):.0f} "
        f"| {statistics.median(r['agent_cpu'] for r in rows):.0f} |"
    )
    wins = sorted({r["best"] for r in rows})
    stop = f"{result['stop_s']:.2f} s" if result["stop_s"] is not None else "over 60 s (killed)"
    print(
        f"\nfastest bare configuration per round: {', '.join(wins)}; start to READY=1: "
        f"{result['ready_s']:.2f} s; SIGTERM to exit: {stop}; agent peak RSS: {result['rss']:.0f} MiB"
    )
    print("\n| stage (all rounds) | p50 ms | p99 ms |\n|---|---|---|")
    for stage, (p50, p99) in result["latency"].items():
        print(f"| {stage} | {p50:.1f} | {p99:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per round")
    parser.add_argument("--rounds", type=int, default=3, help="bare/agent pairs, interleaved")
    parser.add_argument("--batch", type=int, default=8, help="pipeline.max_batch and bare batch")
    parser.add_argument("--max-wait", type=float, default=20.0, help="pipeline.max_wait_ms")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="bare threads")
    parser.add_argument(
        "--agent-threads", type=int, default=None, help="pipeline.intra_op_threads (default unset)"
    )
    parser.add_argument(
        "--agent-spinning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pipeline.intra_op_spinning (default: the agent's default)",
    )
    parser.add_argument(
        "--agent-streams",
        type=int,
        nargs="*",
        default=[None],
        help="pipeline.inference_streams, one agent per value (default: unset, the agent's own)",
    )
    parser.add_argument(
        "--backends",
        nargs="*",
        default=["onnxruntime", "openvino:fp32", "openvino:bf16"],
        help="onnxruntime or openvino[:fp32|bf16|int8]",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/galaxy-edge-bench"))
    args = parser.parse_args(argv)
    art = demo_models.prepare(args.work)
    files = art.heldout_files
    images = [files[i % len(files)] for i in range(args.frames)]
    from build_engine.export import load_onnx, read_metadata

    spec = read_metadata(load_onnx(art.fp32_onnx)).spec
    assert spec is not None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        for target in map(demo_models.parse_target, args.backends):
            onnx = target.onnx(art)
            bundle = demo_models.make_bundle(
                work / f"bundle-{target.key}",
                onnx,
                target.backend,
                precision=target.precision,
                max_batch=args.batch,
            )
            bare = Bare(target.backend, onnx, target.hint, images, spec, args.batch, args.threads)
            for streams in args.agent_streams:
                shown = (
                    target.label
                    if streams is None
                    else f"{target.label}, agent with {streams} stream(s)"
                )
                where = work / f"{target.key}-{streams}"
                results[shown] = measure(target.key, bundle, bare, where, images, args, streams)
            del bare
    print(
        f"\n{art.model_name} (models/demo), {args.frames} real 256x256 JPEGs per round, "
        f"{args.rounds} rounds, batch {args.batch}, max_wait_ms {args.max_wait:g}, bare on "
        f"{args.threads} threads, agent threads "
        f"{args.agent_threads or 'default'}, spinning {args.agent_spinning if args.agent_spinning is not None else 'default'}; "
        f"{os.cpu_count()} CPUs; through mosquitto, measured at a subscriber; started "
        f"{started}, load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    for label, result in results.items():
        report(label, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
