"""Every CPU runtime and precision for the demo model, in one run: speed, peak RSS, gate delta.

Variants (the ONNX files are made the way ``build-engine`` makes them, see ``demo_models.py``):

* ``ort-fp32``: ONNX Runtime FP32 with its defaults (worker threads spin);
* ``ort-fp32-nospin``: the same with spinning off (the agent's default, ``intra_op_spinning``);
* ``ort-int8``: ONNX Runtime on the INT8 Q/DQ ONNX (ModelOpt, calibrated on the training split);
* ``ov-fp32``: OpenVINO, ``INFERENCE_PRECISION_HINT=f32``;
* ``ov-bf16``: OpenVINO, hint ``bf16`` (only where the CPU has AMX or AVX-512 BF16);
* ``ov-int8``: OpenVINO on the same INT8 Q/DQ ONNX (other layers f32);
* ``ort-fp16`` (not by default): the FP16 ONNX ``build-engine --precision fp16`` ships.

OpenVINO runs with the settings the agent loads a bundle with
(``edge_agent.backends.openvino_backend.compile_config``: LATENCY hint, one stream, pinning off).

Each variant is timed in its own child process (so its peak RSS, VmHWM, is its own) at batch 1
and 16 after a warm-up, in ``--rounds`` interleaved rounds (every variant once per round, so a
burst of load from other processes hits all alike); each figure is the median over rounds of the
per-round medians, and ratios are against ``ort-fp32`` of the same run. The gate delta: another
child per variant classifies the held-out images (the run's validation + test splits, 200 real
images neither training nor calibration saw); top-1 and agreement are compared with ``ort-fp32``
and the paired interval of ``build_engine.gate`` decides pass/refuse as ``build-engine`` would.

    .venv/bin/python bench/bench_cpu_inference.py [--rounds 3] [--threads 2] [--diagnose]

Not a test: it prints a markdown table, to be copied into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import demo_models
import numpy as np

from training import host

VARIANTS = ("ort-fp32", "ort-fp32-nospin", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "ort-fp16")
DEFAULT_VARIANTS = VARIANTS[:-1]
LABELS = {
    "ort-fp32": "ONNX Runtime FP32, defaults (spinning on)",
    "ort-fp32-nospin": "ONNX Runtime FP32, spinning off",
    "ort-int8": "ONNX Runtime INT8 Q/DQ",
    "ort-fp16": "ONNX Runtime FP16",
    "ov-fp32": "OpenVINO FP32 (hint f32)",
    "ov-bf16": "OpenVINO BF16 (hint bf16)",
    "ov-int8": "OpenVINO INT8, same Q/DQ file",
}
BATCHES = (1, 16)


# ---------------------------------------------------------------- children


def _runner(variant: str, model_path: str, threads: int) -> Any:
    """A function batch -> logits for ``variant`` (imports only that runtime)."""
    if variant.startswith("ov-"):
        import openvino as ov

        from edge_agent.backends.openvino_backend import compile_config

        hint = "bf16" if variant == "ov-bf16" else "f32"
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(model_path), "CPU", compile_config(hint, threads)
        )
        request = compiled.create_infer_request()
        return lambda x: np.asarray(request.infer({0: x})[0])
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the Q/DQ models' unused-initializer warnings: hundreds
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if variant == "ort-fp32-nospin":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _child_time(variant: str, model_path: str, size: int, threads: int, repeats: int) -> None:
    run = _runner(variant, model_path, threads)
    rng = np.random.default_rng(0)
    results = {}
    for batch in BATCHES:
        x = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
        for _ in range(2):
            run(x)
        n = repeats if batch == 1 else max(3, repeats // 4)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
        results[str(batch)] = {"median_s": statistics.median(times), "runs": n}
    print(json.dumps({"variant": variant, "batches": results, "peak_rss_mb": _peak_rss_mb()}))


def _child_predict(variant: str, model_path: str, threads: int, images: str, out: str) -> None:
    run = _runner(variant, model_path, threads)
    x = np.load(images, mmap_mode="r")
    preds = [
        np.asarray(run(np.ascontiguousarray(x[i : i + 16]))).argmax(axis=1)
        for i in range(0, len(x), 16)
    ]
    np.save(out, np.concatenate(preds))


def _peak_rss_mb() -> float:
    """This process's own RSS high-water mark (VmHWM: ru_maxrss would carry the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- parent


def _child(args: list[str]) -> str:
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: child {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def model_paths(work: Path) -> tuple[demo_models.DemoArtefacts, dict[str, Path]]:
    art = demo_models.prepare(work)
    fp16 = art.work / "model_fp16.onnx"
    paths = {
        "ort-fp32": art.fp32_onnx,
        "ort-fp32-nospin": art.fp32_onnx,
        "ort-int8": art.int8_onnx,
        "ort-fp16": fp16,
        "ov-fp32": art.fp32_onnx,
        "ov-bf16": art.fp32_onnx,
        "ov-int8": art.int8_onnx,
    }
    return art, paths


def _ensure_fp16(art: demo_models.DemoArtefacts, path: Path) -> None:
    if path.is_file():
        return
    from build_engine.fp16 import convert_fp16

    images, _ = art.heldout()
    convert_fp16(art.fp32_onnx, path, np.ascontiguousarray(images[:8]))


def gate_rows(
    art: demo_models.DemoArtefacts, preds: dict[str, np.ndarray]
) -> dict[str, dict[str, Any]]:
    """Top-1, agreement and the gate's paired interval and verdict of each variant vs ort-fp32."""
    from build_engine import gate

    _, labels = art.heldout()
    ref = preds["ort-fp32"]
    ref_ok = ref == labels
    out = {}
    for variant, pred in preds.items():
        ok = pred == labels
        table = gate.paired_table(ref_ok, ok)
        low, high = gate.difference_interval(table, gate.INTERVAL_LEVEL)
        out[variant] = {
            "top1": float(ok.mean()),
            "delta_points": 100.0 * (float(ok.mean()) - float(ref_ok.mean())),
            "agreement": float((pred == ref).mean()),
            "interval": (100.0 * low, 100.0 * high),
            "passed": 100.0 * low >= -gate.DEFAULT_THRESHOLD_POINTS,
            "discordant": (table.reference_only, table.candidate_only),
        }
    return out


def cpu_name() -> str:
    return host.cpu_name("unknown CPU")


def _versions() -> str:
    import onnxruntime

    try:
        import openvino

        ov = openvino.__version__.split("-")[0]
    except ImportError:
        ov = "not installed"
    return f"ONNX Runtime {onnxruntime.__version__}, OpenVINO {ov}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (16: a quarter)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    p.add_argument("--work", type=Path, default=Path("/tmp/galaxy-edge-bench"))
    p.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--no-gate", action="store_true", help="skip the held-out predictions")
    p.add_argument("--diagnose", action="store_true", help="ORT op types and profile (FP32, INT8)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--predict", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-path", default="", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--images", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child_time(args.child, args.model_path, args.size, args.threads, args.repeats)
        return 0
    if args.predict:
        _child_predict(args.predict, args.model_path, args.threads, args.images, args.out)
        return 0

    from edge_agent.backends.openvino_host import probe

    host = probe()
    variants = list(args.variants)
    if "ort-fp32" not in variants:
        variants.insert(0, "ort-fp32")  # every ratio and gate delta is against it
    skipped = []
    if host.version is None:
        skipped += [v for v in variants if v.startswith("ov-")]
    elif not host.has_bf16 and "ov-bf16" in variants:
        skipped.append("ov-bf16")
    variants = [v for v in variants if v not in skipped]
    art, paths = model_paths(args.work)
    if "ort-fp16" in variants:
        _ensure_fp16(art, paths["ort-fp16"])
    size = int(art.heldout()[0].shape[-1])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants:
            print(f"# round {r + 1}/{args.rounds}: {variant}", file=sys.stderr, flush=True)
            out = _child(
                [
                    "--child", variant, "--model-path", str(paths[variant]),
                    "--size", str(size), "--threads", str(args.threads),
                    "--repeats", str(args.repeats),
                ]
            )  # fmt: skip
            rounds[variant].append(json.loads(out.strip().splitlines()[-1]))
    load_after = os.getloadavg()[0]
    preds: dict[str, np.ndarray] = {}
    if not args.no_gate:
        for variant in variants:
            print(f"# held-out predictions: {variant}", file=sys.stderr, flush=True)
            out_path = art.work / f"preds-{variant}.npy"
            _child(
                [
                    "--predict", variant, "--model-path", str(paths[variant]),
                    "--threads", str(args.threads), "--images", str(art.heldout_images),
                    "--out", str(out_path),
                ]
            )  # fmt: skip
            preds[variant] = np.load(out_path)
    gates = gate_rows(art, preds) if preds else {}

    med = {
        v: {
            b: statistics.median(run["batches"][str(b)]["median_s"] for run in runs)
            for b in BATCHES
        }
        for v, runs in rounds.items()
    }
    rss = {v: max(run["peak_rss_mb"] for run in runs) for v, runs in rounds.items()}
    base = med["ort-fp32"]
    print(
        f"\n{art.model_name} (models/demo) {size}x{size}, {args.threads} threads, {_versions()}, "
        f"Python {platform.python_version()}; median of {args.rounds} interleaved round(s), "
        f"started {started}, load average {load_before:.2f} before / {load_after:.2f} after"
    )
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; instruction sets: {', '.join(host.isa)}")
    if skipped:
        print(f"not run here: {', '.join(skipped)} (no OpenVINO, or no BF16 units)")
    n_gate = len(art.heldout()[1])
    print(
        f"\n| runtime, precision | ms/img b1 | ms/img b16 | vs ORT FP32 b1 / b16 | peak RSS "
        f"| top-1 ({n_gate} held-out) | delta vs ORT FP32 | agreement | gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        b1, b16 = med[v][1] * 1e3, med[v][16] * 1e3 / 16
        r1, r16 = base[1] / med[v][1], base[16] / med[v][16]
        g = gates.get(v)
        if g is None:
            gate_cols = "| - | - | - | - |"
        elif v == "ort-fp32":
            gate_cols = f"| {g['top1']:.1%} | reference | 100% | reference |"
        else:
            lo, hi = g["interval"]
            verdict = "passes" if g["passed"] else "REFUSED"
            gate_cols = (
                f"| {g['top1']:.1%} | {g['delta_points']:+.1f} points [{lo:+.1f}, {hi:+.1f}] "
                f"| {g['agreement']:.1%} | {verdict} ({g['discordant'][0]}/{g['discordant'][1]}) |"
            )
        print(
            f"| {LABELS[v]} | {b1:.1f} | {b16:.1f} | {r1:.2f}x / {r16:.2f}x | {rss[v]:.0f} MB "
            + gate_cols
        )
    if gates:
        print(
            "\ndelta: candidate minus ORT FP32 top-1, with the gate's 90% paired interval "
            "(Newcombe); gate: build-engine's rule (lower end >= -1 point); (a/b): images only "
            "the reference / only the candidate got right."
        )
    if args.diagnose:
        _diagnose(paths, size, args.threads)
    return 0


# ---------------------------------------------------------------- diagnostics (--diagnose)


def optimized_op_counts(path: Path, threads: int) -> Counter[str]:
    """Op types of the graph ONNX Runtime actually runs (after its Q/DQ fusions)."""
    import onnx
    import onnxruntime as ort

    out = path.with_suffix(".optimized.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def profile_ops(path: Path, size: int, threads: int, batch: int = 16) -> list[tuple[str, float]]:
    """Share of kernel time per op type at ``batch`` (ORT profiler, 3 runs after warm-up)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix("")) + "_profile"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    for _ in range(4):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [(op, dur / total) for op, dur in per_op.most_common(8)]


def _diagnose(paths: dict[str, Path], size: int, threads: int) -> None:
    print("\n## What ONNX Runtime runs (op types after graph optimisation, top 10)")
    for key in ("ort-fp32", "ort-int8"):
        counts = optimized_op_counts(paths[key], threads)
        print(f"- {key}: " + ", ".join(f"{op} {n}" for op, n in counts.most_common(10)))
    print("\n## Where the time goes at batch 16 (ORT profiler, share of kernel time)")
    for key in ("ort-fp32", "ort-int8"):
        shares = profile_ops(paths[key], size, threads)
        print(f"- {key}: " + ", ".join(f"{op} {share:.0%}" for op, share in shares))


if __name__ == "__main__":
    sys.exit(main())
