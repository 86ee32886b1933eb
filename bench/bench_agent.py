"""The edge agent's throughput against bare ONNX Runtime on the same model and batch size.

One run measures, on this machine:

* bare ONNX Runtime: ``session.run`` on already preprocessed batches (no decode, no I/O), before
  and after the agent, averaged;
* the agent, as systemd runs it (``python -m edge_agent run``): JPEGs waiting in its watched
  folder are decoded, preprocessed, batched, classified and written to the outbox. Throughput is
  frames over (last ``classified_at`` - first ``received_at``) read from the payloads;
* per-stage latency p50/p99 from the payloads, the agent's peak RSS, and the time from process
  start to READY=1 on a notify socket (interpreter, imports, bundle hashing, session, warm-up).

No broker is needed: the agent's results stay in its outbox, which is read after it stops.
The model is ``mobilevit_s`` (random weights unless ``--checkpoint`` is given: weights do not
change the cost), exported to ONNX with a dynamic batch axis.

    .venv/bin/python bench/bench_agent.py [--checkpoint RUN_DIR] [--frames 96] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from edge_agent.decode import decode_file
from edge_agent.config import DecodeConfig
from edge_agent.manifest import Manifest, ModelInfo, official_classes, sha256_file, write_manifest
from edge_agent.preprocess import DEFAULT_SPEC, preprocess_batch

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

        model, name = timm.create_model("mobilevit_s", num_classes=10, pretrained=False), "mobilevit_s"
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


def bare_ort(bundle: Path, images: list[Path], batch: int, threads: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    frames = [decode_file(p, DecodeConfig()) for p in images]
    batches = [preprocess_batch(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    session.run(["logits"], {"input": batches[0]})  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        session.run(["logits"], {"input": b})
    return len(frames) / (time.perf_counter() - t0)


def run_agent(bundle: Path, images: list[Path], work: Path, batch: int, threads: int) -> dict[str, object]:
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    for i, src in enumerate(images):
        shutil.copyfile(src, inbox / f"{i:05}.jpg")
    config = {
        "device_id": "bench",
        "bundle": str(bundle),
        "sources": [{"uri": f"dir://{inbox}", "name": "inbox", "queue_size": 64}],
        "pipeline": {"max_batch": batch, "max_wait_ms": 50, "intra_op_threads": threads},
        "quarantine_dir": str(work / "quarantine"),
        "state_dir": str(work / "state"),
        "stats_interval_s": 3600,
        "drain_timeout_s": 3,
        "log_level": "WARNING",
        "mqtt": {"host": "127.0.0.1", "port": 9, "outbox": {"path": str(work / "outbox.sqlite3")}},
    }  # port 9 (discard): no broker, results stay in the outbox
    (work / "agent.yaml").write_text(yaml.safe_dump(config))
    sock_path = work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(120)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(work / "agent.yaml")],
        env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
    )
    while not sock.recv(4096).startswith(b"READY=1"):
        pass
    ready_s = time.monotonic() - t0
    outbox = work / "outbox.sqlite3"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            count = db.execute("SELECT COUNT(*) FROM messages WHERE topic LIKE '%/classifications'").fetchone()[0]
        if count >= len(images):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    sock.close()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT payload FROM messages WHERE topic LIKE '%/classifications'").fetchall()
    bodies = [json.loads(r[0]) for r in rows]
    start = min(datetime.fromisoformat(b["received_at"].replace("Z", "+00:00")) for b in bodies)
    end = max(datetime.fromisoformat(b["classified_at"].replace("Z", "+00:00")) for b in bodies)
    stages = {}
    for stage in ("decode", "queue", "preprocess", "infer", "total"):
        values = np.array([b["latency_ms"][stage] for b in bodies])
        stages[stage] = (float(np.percentile(values, 50)), float(np.percentile(values, 99)))
    return {
        "frames": len(bodies),
        "fps": len(bodies) / (end - start).total_seconds(),
        "ready_s": ready_s,
        "peak_rss_mb": peak_rss_mb,
        "latency": stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="galaxy-train run dir or .safetensors")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        manifest = make_bundle(work / "bundle", args.checkpoint, args.batch)
        images = pick_images(args.frames)
        bare1 = bare_ort(work / "bundle", images, args.batch, args.threads)
        agent = run_agent(work / "bundle", images, work / "agent", args.batch, args.threads)
        bare2 = bare_ort(work / "bundle", images, args.batch, args.threads)
    bare = (bare1 + bare2) / 2
    fps = float(agent["fps"])  # type: ignore[arg-type]
    print(f"model {manifest.model.name} ({'checkpoint' if args.checkpoint else 'random weights'}), "
          f"{args.frames} JPEGs 256x256, batch {args.batch}, {args.threads} ORT threads, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| measure | value |\n|---|---|")
    print(f"| bare ONNX Runtime (before / after) | {bare1:.2f} / {bare2:.2f} img/s |")
    print(f"| edge-agent (decode+preprocess+batch+infer+outbox) | {fps:.2f} img/s |")
    print(f"| agent / bare | {100 * fps / bare:.1f} % (goal >= 90 %) |")
    print(f"| start to READY=1 | {agent['ready_s']:.2f} s |")
    print(f"| peak RSS of the agent | {agent['peak_rss_mb']:.0f} MiB |")
    print("\n| stage | p50 ms | p99 ms |\n|---|---|---|")
    for stage, (p50, p99) in agent["latency"].items():  # type: ignore[attr-defined]
        print(f"| {stage} | {p50:.1f} | {p99:.1f} |")
    print("\n(queue and total include waiting behind the frames already in the folder at start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
