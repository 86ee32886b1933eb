"""CPU inference benchmark: timm eager vs ONNX Runtime FP32 / FP16 / INT8 Q/DQ, in one run.

Each variant runs in its own child process (so its peak RSS is its own), at batch 1 and 16,
after warm-up; the medians are compared as ratios against ONNX Runtime FP32 measured in the
same run on the same machine. Then it looks at why INT8 Q/DQ is or is not faster: the CPU's
INT8 instructions, what ONNX Runtime's graph optimiser turned the Q/DQ graph into (integer
kernels, or DequantizeLinear feeding float kernels), and where the time goes (ORT profiler).

    .venv/bin/python bench/bench_cpu_inference.py [--model mobilevit_s] [--threads 2]

Not a test: it prints a markdown table and findings, to be copied into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

SAMPLE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "galaxy10-sample"
    / "labels.csv"
)
VARIANTS = (
    "torch-eager",
    "ort-fp32",
    "ort-fp16",
    "ort-int8-modelopt",
    "ort-int8-ortq",
    "ort-int8-u8act",
)
BATCHES = (1, 16)


# ---------------------------------------------------------------- child: one variant, timed


def _child(
    variant: str, model_path: str, model_name: str, size: int, threads: int, repeats: int
) -> None:
    rng = np.random.default_rng(0)
    results = {}
    if variant == "torch-eager":
        import timm
        import torch

        torch.set_num_threads(threads)
        model = timm.create_model(model_name, num_classes=10, pretrained=False).eval()

        def run(x: np.ndarray) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

        def run(x: np.ndarray) -> object:
            return session.run(None, {"input": x})

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


def _peak_rss_mb() -> float:
    """This process's own RSS high-water mark.

    Not ``getrusage().ru_maxrss``: Linux carries the pre-exec (forked parent's) peak into it,
    so every child would report the parent's memory. VmHWM belongs to the new address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


# ---------------------------------------------------------------- parent: prepare, run, report


def _calibration(size: int, count: int) -> tuple[np.ndarray, str]:
    if SAMPLE.is_file():
        from edge_agent.contract.labelled_data import open_labelled
        from edge_agent.contract.preprocess import DEFAULT_SPEC, preprocess_batch

        data = open_labelled(SAMPLE, limit=count)
        spec = DEFAULT_SPEC.model_copy(update={"input_size": size})
        return preprocess_batch(
            [data[i][0] for i in range(len(data))], spec
        ), f"{len(data)} sample images"
    rng = np.random.default_rng(1)
    return rng.uniform(-1, 1, (count, 3, size, size)).astype(np.float32), f"{count} random inputs"


def prepare(work: Path, model_name: str, size: int, calib_count: int) -> dict[str, Path]:
    """Export once, then derive FP16 and both INT8 variants (cached in ``work``)."""
    import torch

    from build_engine.export import export_module
    from build_engine.fp16 import convert_fp16
    from build_engine.quantize import quantize_int8

    work.mkdir(parents=True, exist_ok=True)
    paths = {
        "ort-fp32": work / f"{model_name}_fp32.onnx",
        "ort-fp16": work / f"{model_name}_fp16.onnx",
        "ort-int8-modelopt": work / f"{model_name}_int8_modelopt.onnx",
        "ort-int8-ortq": work / f"{model_name}_int8_ortq.onnx",
        "ort-int8-u8act": work / f"{model_name}_int8_u8act.onnx",
    }
    if not paths["ort-fp32"].is_file():
        import timm

        torch.manual_seed(0)
        model = timm.create_model(model_name, num_classes=10, pretrained=False).eval()
        export_module(model, paths["ort-fp32"], input_size=size)
    calib, what = _calibration(size, calib_count)
    if not paths["ort-fp16"].is_file():
        convert_fp16(paths["ort-fp32"], paths["ort-fp16"], calib[:4])
    for key, method in (("ort-int8-modelopt", "modelopt"), ("ort-int8-ortq", "onnxruntime")):
        if not paths[key].is_file():
            t0 = time.perf_counter()
            report = quantize_int8(
                paths["ort-fp32"], paths[key], calib, method=method, calibration_method="max"
            )  # type: ignore[arg-type]
            print(
                f"# {key}: {report.qdq_pairs} quantizers, {time.perf_counter() - t0:.1f} s, calibrated on {what}",
                file=sys.stderr,
            )
    if not paths["ort-int8-u8act"].is_file():
        _u8_activations(paths["ort-fp32"], paths["ort-int8-u8act"], calib)
    return paths


def _u8_activations(src: Path, dst: Path, calib: np.ndarray) -> None:
    """Diagnostic only: asymmetric uint8 activations, which TensorRT rejects.

    ONNX Runtime's x86 build fuses DQ->Conv->Q into QLinearConv only for uint8 activations
    (``QDQIsInt8Allowed()`` is false off ARM); this variant shows what that fusion is worth.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(calib):
                return None
            self.pos += 8
            return {"input": calib[self.pos - 8 : self.pos]}

    kept = {"LayerNormalization", "Softmax", "Add"}
    exclude = [n.name for n in onnx.load(str(src)).graph.node if n.op_type in kept]
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
    )


def run_variant(
    variant: str, path: Path | None, model_name: str, size: int, threads: int, repeats: int
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        model_name,
        "--size",
        str(size),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
        "--model-path",
        str(path or ""),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _combine(runs: list[dict]) -> dict:
    batches = {
        b: {"median_s": statistics.median(r["batches"][b]["median_s"] for r in runs)}
        for b in runs[0]["batches"]
    }
    return {"batches": batches, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def optimized_op_counts(path: Path, threads: int) -> Counter[str]:
    """Op types of the graph ONNX Runtime actually runs (after its Q/DQ fusions)."""
    import onnx
    import onnxruntime as ort

    out = path.with_suffix(".optimized.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the Q/DQ models' unused-initializer warnings: hundreds
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
        session.run(None, {"input": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [(op, dur / total) for op, dur in per_op.most_common(8)]


def qdq_boundaries(path: Path) -> dict[str, int]:
    """How many Q/DQ pairs there are and how many sit next to an op kept out of INT8."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = {"LayerNormalization", "Softmax", "Add"}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    after_kept = sum(
        1 for q in quantizers if (p := producer.get(q.input[0])) is not None and p.op_type in kept
    )
    return {
        "QuantizeLinear": len(quantizers),
        "fed by LayerNorm/Softmax/Add": after_kept,
        "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
    }


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set()
    model = "unknown"
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"]
    return f"{model}; {os.cpu_count()} cores; " + ", ".join(
        f"{f}={'yes' if f in flags else 'no'}" for f in wanted
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilevit_s")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, default=20, help="timed runs at batch 1 (batch 16: a quarter)"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    p.add_argument("--calib", type=int, default=64, help="calibration images for the INT8 variants")
    p.add_argument("--work", type=Path, default=Path("/tmp/galaxy-edge-bench"))
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model-path", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.model_path, args.model, args.size, args.threads, args.repeats)
        return 0

    paths = prepare(args.work, args.model, args.size, args.calib)
    # Rounds interleave the variants, so a burst of load from other processes hits them all
    # alike; each variant's figure is the median over rounds of its per-round medians.
    rounds: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for variant in args.variants:
            print(f"# round {r + 1}/{args.rounds}: {variant}", file=sys.stderr)
            rounds[variant].append(
                run_variant(
                    variant, paths.get(variant), args.model, args.size, args.threads, args.repeats
                )
            )
    results = {v: _combine(runs) for v, runs in rounds.items()}
    base = results.get("ort-fp32")
    print(
        f"\n{args.model} {args.size}x{args.size}, {args.threads} threads, "
        f"Python {platform.python_version()}, median of {args.rounds} interleaved round(s); "
        f"load average at the end {os.getloadavg()[0]:.2f} (other processes share these cores)"
    )
    print(f"CPU: {cpu_flags()}\n")
    print(
        "| variant | batch | median ms/batch | ms/image | images/s | vs ORT FP32 (throughput) | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        for batch in BATCHES:
            med = r["batches"][str(batch)]["median_s"]
            ratio = base["batches"][str(batch)]["median_s"] / med if base else float("nan")
            print(
                f"| {variant} | {batch} | {med * 1e3:.1f} | {med * 1e3 / batch:.1f} | {batch / med:.1f} | "
                f"{ratio:.2f}x | {r['peak_rss_mb']:.0f} |"
            )
    print("\n## What ONNX Runtime runs (op types after graph optimisation, top 10)")
    for key in ("ort-fp32", "ort-int8-modelopt", "ort-int8-ortq", "ort-int8-u8act"):
        counts = optimized_op_counts(paths[key], args.threads)
        print(f"- {key}: " + ", ".join(f"{op} {n}" for op, n in counts.most_common(10)))
    print("\n## Q/DQ nodes in the INT8 models")
    for key in ("ort-int8-modelopt", "ort-int8-ortq", "ort-int8-u8act"):
        print(f"- {key}: {qdq_boundaries(paths[key])}")
    print("\n## Where the time goes at batch 16 (ORT profiler, share of kernel time)")
    for key in ("ort-fp32", "ort-int8-modelopt", "ort-int8-ortq", "ort-int8-u8act"):
        print(
            f"- {key}: "
            + ", ".join(
                f"{op} {share:.0%}"
                for op, share in profile_ops(paths[key], args.size, args.threads)
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
