"""What a hostile file can cost: a corpus of header bombs decoded in a fresh process, whose peak
resident memory must stay within a stated bound of its baseline (issue 7, defect 2); and what the
largest file the limits let through costs: a small multiple of ``decode.max_decoded_bytes``.

The child is started through ``sh`` (not exec'd straight from pytest) because Linux carries a
process's ``ru_maxrss`` across ``exec``: a child exec'd from a 400 MiB pytest reports 400 MiB.
"""

from __future__ import annotations

import io
import json
import math
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_bombs import header_bombs, png

from edge_agent.contract.decode_config import DecodeConfig

BOUND_MIB = 200  # peak resident memory above the warmed-up baseline, for the whole corpus
# Peak growth of decoding the largest file the limits let through, in units of
# decode.max_decoded_bytes, besides the file's own bytes: a grey 8-bit frame becomes three RGB
# bands (measured 4x with the decoder's buffer), a 16-bit one is stretched in float32 (3.8x).
CAP_FACTOR = 5

_CHILD = r"""
import json, resource, sys
from pathlib import Path
from edge_agent.contract.decode import DecodeError, decode_file
from edge_agent.contract.decode_config import DecodeConfig

def rss():
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, int(hwm.split()[1]) // 1024

config = DecodeConfig.model_validate_json(sys.argv[2])
root = Path(sys.argv[1])
for path in sorted((root / "warm").iterdir()):  # load every codec and astropy first
    decode_file(path, config)
baseline = rss()
results = {}
for path in sorted((root / "inputs").iterdir()):
    try:
        shape = decode_file(path, config).shape
        results[path.name] = ["decoded", str(shape)]
    except DecodeError as exc:
        results[path.name] = [exc.reason, str(exc)]
    except BaseException as exc:
        results[path.name] = ["raised " + type(exc).__name__, str(exc)[:200]]
print(json.dumps({"baseline": baseline, "peak": rss(), "results": results}))
"""


def _warm_files(folder: Path) -> None:
    from astropy.io import fits

    folder.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for ext in (".png", ".jpg", ".tiff", ".bmp", ".webp"):
        ok, data = cv2.imencode(ext, rgb)
        assert ok
        (folder / f"warm{ext}").write_bytes(data.tobytes())
    np.save(folder / "warm.npy", rgb)
    fits.PrimaryHDU(rgb[:, :, 0].astype(np.float32)).writeto(folder / "warm.fits")


def _decode_in_child(
    root: Path, inputs: dict[str, bytes], config: DecodeConfig
) -> tuple[dict[str, list[str]], int, int]:
    """Decode ``inputs`` in a fresh process; (results, ru_maxrss growth, VmHWM growth) in MiB."""
    _warm_files(root / "warm")
    (root / "inputs").mkdir()
    for name, data in inputs.items():
        (root / "inputs" / name).write_bytes(data)
    command = shlex.join([sys.executable, "-c", _CHILD, str(root), config.model_dump_json()])
    done = subprocess.run(
        ["sh", "-c", command + "; exit $?"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (base_maxrss, base_hwm), (peak_maxrss, peak_hwm) = report["baseline"], report["peak"]
    assert sorted(report["results"]) == sorted(inputs)
    return report["results"], peak_maxrss - base_maxrss, peak_hwm - base_hwm


def test_header_bombs_are_refused_within_a_memory_bound(tmp_path: Path) -> None:
    bombs = header_bombs()
    assert all(len(data) < 128 * 1024 for data in bombs.values())  # small files, huge claims
    results, maxrss_growth, hwm_growth = _decode_in_child(tmp_path, bombs, DecodeConfig())
    for name, (reason, message) in results.items():
        assert reason in ("oversized", "truncated"), f"{name}: {reason}: {message}"
        assert message, name
    assert maxrss_growth < BOUND_MIB, results
    assert hwm_growth < BOUND_MIB, results


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _fits(array: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(array).writeto(buf)
    return buf.getvalue()


def _largest_allowed(side_bytes: int) -> dict[str, bytes]:
    """Files whose decoded arrays just fit ``side_bytes``: highly compressed, cheap to send."""
    grey = math.isqrt(side_bytes)
    deep = math.isqrt(side_bytes // 2)
    rgba = math.isqrt(side_bytes // 4)
    noisy_row = np.random.default_rng(2).integers(0, 65535, deep).astype(">u2").tobytes()
    floats = np.random.default_rng(3).normal(size=(rgba, rgba)).astype(np.float32)
    return {
        "grey8.png": png(grey, grey, 8, 0, zlib.compress(b"\x00" * grey * (grey + 1), 9)),
        "grey16.png": png(deep, deep, 16, 0, zlib.compress((b"\x00" + noisy_row) * deep, 9)),
        "rgba8.png": png(rgba, rgba, 8, 6, zlib.compress(b"\x00" * rgba * (4 * rgba + 1), 9)),
        "float32.npy": _npy(floats),
        "float32.fits": _fits(floats),
    }


CAP = 16 * 1024 * 1024


@pytest.mark.parametrize(
    "name", ["grey8.png", "grey16.png", "rgba8.png", "float32.npy", "float32.fits"]
)
def test_the_largest_allowed_file_costs_a_few_times_the_decoded_cap(
    tmp_path: Path, name: str
) -> None:
    """One file per process: in one process, the allocator keeps some freed memory for reuse,
    which is a plateau, not a cost of the next file."""
    data = _largest_allowed(CAP)[name]
    config = DecodeConfig(max_pixels=CAP, max_decoded_bytes=CAP)
    results, maxrss_growth, hwm_growth = _decode_in_child(tmp_path, {name: data}, config)
    assert results[name][0] == "decoded", results
    bound = (CAP_FACTOR * CAP + len(data)) // (1024 * 1024)
    assert maxrss_growth < bound, (maxrss_growth, results)
    assert hwm_growth < bound, (hwm_growth, results)
