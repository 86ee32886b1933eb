"""Wide-field benchmark: one 4096 x 4096 frame, 50 real galaxies, 200 stars, on this CPU.

Measures, over ``--repeat`` runs of the same FITS file (medians): reading, detection (background,
extraction, half-light radii), filtering, cutting out and composing the galaxies, and classifying
them through a bundle's backend (batches of ``--batch``); frames per second of the whole path;
the process's peak RSS. The frame is built like the tests' (edge_agent.fields.synthetic): real
Galaxy10 galaxies from ../shared/data/galaxy10-sample when present, else model galaxies.

    python bench/bench_fields.py [--bundle DIR] [--bands 1|3] [--repeat 3] [--json OUT]

Without ``--bundle`` the demo model is built into an ONNX Runtime bundle first (build-engine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.backends.factory import create_backend
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.manifest import load_bundle
from edge_agent.contract.preprocess import preprocess_batch
from edge_agent.fields.process import process_field
from edge_agent.fields.settings import FieldsConfig
from edge_agent.fields.stage import read_field
from edge_agent.fields.synthetic import make_field, model_galaxy, write_fits

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "galaxy10-sample"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def galaxies(count: int) -> tuple[list[np.ndarray], str]:
    labels = SAMPLE / "labels.csv"
    if not labels.is_file():
        return [model_galaxy(r_e=6 + i % 20, angle_deg=17 * i) for i in range(count)], "model"
    with labels.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // count)
    out = []
    for row in rows[::step][:count]:
        bgr = cv2.imread(str(SAMPLE / row["file"]), cv2.IMREAD_COLOR)
        out.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    return out, "real Galaxy10 sample"


def build_bundle(out: Path) -> Path:
    cmd = [sys.executable, "-m", "build_engine.cli", "--checkpoint", str(ROOT / "models" / "demo")]
    cmd += ["--out", str(out), "--backend", "onnxruntime", "--precision", "fp32"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, help="bundle (default: build the demo model)")
    parser.add_argument("--bands", type=int, choices=(1, 3), default=1)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--galaxies", type=int, default=50)
    parser.add_argument("--stars", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="default: pipeline.max_batch's")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--write-frame", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()

    if args.write_frame is not None:
        gals, kind = galaxies(args.galaxies)
        field = make_field(
            gals, shape=(args.size, args.size), n_stars=args.stars, bands=args.bands, seed=42
        )
        write_fits(field, args.write_frame, "uint16" if args.bands == 1 else "float32")
        print(kind)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-fields-"))
    bundle = args.bundle or build_bundle(work / "bundle")
    # The frame is made in a child process: its peak memory is not the agent's.
    path = work / "frame.fits"
    child = [sys.executable, __file__, "--write-frame", str(path), "--bands", str(args.bands)]
    child += ["--size", str(args.size), "--galaxies", str(args.galaxies)]
    child += ["--stars", str(args.stars)]
    kind = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip()
    manifest = load_bundle(bundle)
    decode, settings = DecodeConfig(), FieldsConfig()
    # One untimed pass before the model is loaded: the peak RSS of the wide-field path alone.
    rss_start = peak_rss_mb()
    process_field(read_field(path, decode, settings), settings, manifest.preprocess.input_size)
    rss_fields = peak_rss_mb()
    backend = create_backend(bundle, manifest)
    backend.warmup()
    runs: list[dict[str, float]] = []
    found = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        raw = read_field(path, decode, settings)
        t1 = time.perf_counter()
        out = process_field(raw, settings, manifest.preprocess.input_size)
        del raw
        t2 = time.perf_counter()
        images = [c.image for c in out.cutouts]
        for i in range(0, len(images), args.batch):
            backend.infer(preprocess_batch(images[i : i + args.batch], manifest.preprocess))
        t3 = time.perf_counter()
        if "filter" not in out.summary["timings_ms"]:
            raise SystemExit(f"bench: the frame was not processed: {out.problems}")
        timings = out.summary["timings_ms"]
        runs.append(
            {
                "read_s": t1 - t0,
                "detect_s": timings["detect"] / 1e3,
                "filter_s": timings["filter"] / 1e3,
                "cutout_s": timings["cutout"] / 1e3,
                "classify_s": t3 - t2,
                "total_s": t3 - t0,
            }
        )
        found = len(out.cutouts)
    backend.close()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result: dict[str, Any] = {
        "frame": f"{args.size}x{args.size}, {args.bands} band(s), {args.galaxies} galaxies "
        f"({kind}), {args.stars} stars",
        "sources_found": out.summary["sources_found"],
        "galaxies_classified": found,
        "repeats": args.repeat,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "classify_ms_per_galaxy": round(1e3 * med["classify_s"] / max(found, 1), 1),
        "frames_per_second": round(1.0 / med["total_s"], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_start_mb": round(rss_start, 1),
        "peak_rss_after_fields_path_mb": round(rss_fields, 1),  # before the model is loaded
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "precision": manifest.precision,
        "backend": backend.name,
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
