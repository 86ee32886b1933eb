"""What a hostile file can cost: a corpus of header bombs decoded in a fresh process, whose peak
resident memory must stay within a stated bound of its baseline (issue 7, defect 2).

The child is started through ``sh`` (not exec'd straight from pytest) because Linux carries a
process's ``ru_maxrss`` across ``exec``: a child exec'd from a 400 MiB pytest reports 400 MiB.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from image_bombs import header_bombs

BOUND_MIB = 200  # peak resident memory above the warmed-up baseline, for the whole corpus

_CHILD = r"""
import json, resource, sys
from pathlib import Path
from edge_agent.contract.decode import DecodeError, decode_file
from edge_agent.contract.decode_config import DecodeConfig

def rss():
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, int(hwm.split()[1]) // 1024

config = DecodeConfig()
root = Path(sys.argv[1])
for path in sorted((root / "warm").iterdir()):  # load every codec and astropy first
    decode_file(path, config)
baseline = rss()
results = {}
for path in sorted((root / "bombs").iterdir()):
    try:
        decode_file(path, config)
        results[path.name] = ["decoded", ""]
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


def test_header_bombs_are_refused_within_a_memory_bound(tmp_path: Path) -> None:
    _warm_files(tmp_path / "warm")
    (tmp_path / "bombs").mkdir()
    bombs = header_bombs()
    for name, data in bombs.items():
        assert len(data) < 128 * 1024  # small files: what they claim is what would cost
        (tmp_path / "bombs" / name).write_bytes(data)
    command = shlex.join([sys.executable, "-c", _CHILD, str(tmp_path)]) + "; exit $?"
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert sorted(results) == sorted(bombs)
    for name, (reason, message) in results.items():
        assert reason in ("oversized", "truncated"), f"{name}: {reason}: {message}"
        assert message, name
    (base_maxrss, base_hwm), (peak_maxrss, peak_hwm) = report["baseline"], report["peak"]
    assert peak_maxrss - base_maxrss < BOUND_MIB, report
    assert peak_hwm - base_hwm < BOUND_MIB, report
