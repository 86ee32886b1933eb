"""INT8 accuracy on the demo model: every PTQ calibration method, then mixed precision.

Not a speed benchmark: it measures what each way of making INT8 costs in top-1, against the FP32
model, on the same held-out images, with the accuracy gate's own code (paired Newcombe
interval). The images come from the checkpoint's own ``split.json``:

- calibration: ``--calib-size`` images of the training split (what build-engine calibrates on);
- sensitivity (``--keep``): ``--sensitivity-size`` other images of the training split;
- gate: the validation + test splits, which neither training nor calibration saw.

    .venv/bin/python bench/bench_int8.py --checkpoint models/demo \\
        --data ../shared/data/galaxy10-sample/labels.csv --work /tmp/int8-bench \\
        [--methods modelopt-entropy,modelopt-max,ort-minmax,ort-entropy,ort-percentile] \\
        [--keep 0,2,4,8 --keep-method modelopt-entropy]

Quantized models are cached in ``--work`` (delete a file to redo it); results go to
``--work/results.json`` and a markdown table on stdout, for docs/int8.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("modelopt-entropy", "modelopt-max", "ort-minmax", "ort-entropy", "ort-percentile")


def _split_csvs(checkpoint: Path, data: Path, work: Path) -> tuple[Path, Path]:
    """train.csv and heldout.csv (val + test) of the checkpoint's split, absolute file paths."""
    split = json.loads((checkpoint / "split.json").read_text(encoding="utf-8"))
    with open(data, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if split["dataset"]["images"] != len(rows):
        raise SystemExit(f"{data}: {len(rows)} rows, the split was made on {split['dataset']}")
    out = []
    for name, parts in (("train", ("train",)), ("heldout", ("val", "test"))):
        path = work / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "label", "name"])
            for i in sorted(i for part in parts for i in split[part]):
                row = rows[i]
                image = (data.parent / row["file"]).resolve()  # the CSVs live in --work
                writer.writerow([str(image), row["label"], row["name"]])
        out.append(path)
    return out[0], out[1]


def _quantize(method: str, src: Path, dst: Path, calib: np.ndarray) -> str:
    from build_engine.quantize import quantize_int8

    quantizer, _, how = method.partition("-")
    if quantizer == "modelopt":
        report = quantize_int8(src, dst, calib, method="modelopt", calibration_method=how)  # type: ignore[arg-type]
    else:
        report = quantize_int8(src, dst, calib, method="onnxruntime", ort_calibration=how)  # type: ignore[arg-type]
    return f"{report.qdq_pairs} quantizers"


def _row(name: str, gate: object, seconds: float, extra: str = "") -> dict[str, Any]:
    g = gate.model_dump()  # type: ignore[attr-defined]
    return {"candidate": name, "seconds": round(seconds, 1), "note": extra, **g}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate | top-1 | FP32 top-1 | delta (points) | agreement | 90% interval (points) "
        "| discordant (ref only / cand only) | gate (1.0 pt) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['candidate_top1']:.1%} | {r['reference_top1']:.1%} "
            f"| {-float(r['delta_points']):+.1f} | {r['agreement']:.1%} "
            f"| [{r['interval_low_points']:+.2f}, {r['interval_high_points']:+.2f}] "
            f"| {r['reference_only_correct']} / {r['candidate_only_correct']} "
            f"| {'passed' if r['passed'] else 'refused'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/demo"))
    p.add_argument("--data", type=Path, required=True, help="the labels CSV the split indexes")
    p.add_argument("--work", type=Path, required=True, help="cache and results directory")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument(
        "--keep", default="", help="comma-separated N for --keep-sensitive, e.g. 0,2,4,8"
    )
    p.add_argument("--keep-method", default="modelopt-entropy")
    p.add_argument("--sensitivity-size", type=int, default=64)
    p.add_argument("--sensitivity-mode", choices=("only", "without"), default="only")
    args = p.parse_args(argv)

    from build_engine import gate as gate_mod
    from build_engine.export import export_checkpoint
    from build_engine.images import load_calibration_and_gate

    args.work.mkdir(parents=True, exist_ok=True)
    train_csv, heldout_csv = _split_csvs(args.checkpoint, args.data, args.work)
    fp32 = args.work / "fp32.onnx"
    if not fp32.is_file():
        export_checkpoint(args.checkpoint, fp32)
    from build_engine.export import load_onnx, read_metadata

    spec = read_metadata(load_onnx(fp32), str(fp32)).spec
    assert spec is not None
    calib, gate_set = load_calibration_and_gate(
        train_csv, args.calib_size, 10_000, gate_path=heldout_csv, spec=spec
    )
    print(f"calibration {len(calib)} train images, gate {len(gate_set)} held-out", file=sys.stderr)
    results_path = args.work / "results.json"
    results: dict[str, dict[str, Any]] = (
        json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    )

    def record(name: str, candidate: Path, seconds: float, note: str) -> None:
        g = gate_mod.evaluate(fp32, candidate, gate_set, progress=False)
        results[name] = _row(name, g, seconds, note)
        results_path.write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(gate_mod.describe(g, name), file=sys.stderr, flush=True)

    for method in filter(None, args.methods.split(",")):
        if method not in METHODS:
            raise SystemExit(f"unknown method {method}; one of {', '.join(METHODS)}")
        dst = args.work / f"int8_{method}.onnx"
        t0 = time.perf_counter()
        note = _quantize(method, fp32, dst, calib.images) if not dst.is_file() else "cached"
        record(f"PTQ {method}", dst, time.perf_counter() - t0, note)

    keeps = [int(k) for k in args.keep.split(",") if k.strip()]
    if keeps:
        from build_engine.sensitivity import keep_in_float, load_sensitivity, measure

        base = args.work / f"int8_{args.keep_method}.onnx"
        if not base.is_file():
            _quantize(args.keep_method, fp32, base, calib.images)
        sens = load_sensitivity(
            train_csv,
            args.sensitivity_size,
            exclude=set(calib.refs) | set(gate_set.refs),
            spec=spec,
        )
        cache = (
            args.work / f"sensitivity_{args.keep_method}_{args.sensitivity_mode}_{len(sens)}.json"
        )
        t0 = time.perf_counter()
        if cache.is_file():
            from build_engine.sensitivity import SensitivityReport

            report = SensitivityReport.from_json(cache.read_text(encoding="utf-8"))
        else:
            report = measure(fp32, base, sens, mode=args.sensitivity_mode, progress=True)
            cache.write_text(report.to_json(), encoding="utf-8")
        took = time.perf_counter() - t0
        print(report.summary(10), file=sys.stderr)
        for n in keeps:
            dst = args.work / f"int8_{args.keep_method}_keep{n}_{args.sensitivity_mode}.onnx"
            kept = report.most_sensitive(n)
            keep_in_float(base, dst, kept)
            record(
                f"PTQ {args.keep_method} + keep {n} ({args.sensitivity_mode})",
                dst,
                took,
                ", ".join(kept),
            )
    print(_table(list(results.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
