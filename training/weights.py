"""The sha256 a run records for its weights, and the check every reader of them makes.

``galaxy-train`` writes ``best.safetensors`` and, beside it, ``best.safetensors.sha256`` in
``sha256sum`` format (``sha256sum -c best.safetensors.sha256`` checks it by hand). safetensors
itself has no checksum: flipped bytes inside a tensor still load, and would be deployed.
``build-engine`` and ``galaxy-train evaluate`` call :func:`verify_weights` before using a
checkpoint and refuse a file whose hash differs from the record, or that has no record.

No torch here: ``build-engine`` verifies a checkpoint before it pays for importing torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from training.errors import CheckpointError

SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_path(weights: Path) -> Path:
    """Where the hash of ``weights`` is recorded: ``<weights>.sha256``."""
    return Path(weights).with_name(Path(weights).name + SUFFIX)


def record_weights(weights: Path, sha256: str | None = None) -> str:
    """Write ``<weights>.sha256`` (atomically) and return the hash."""
    weights = Path(weights)
    digest = sha256 or sha256_of(weights)
    target = record_path(weights)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{digest}  {weights.name}\n", encoding="utf-8")
    os.replace(tmp, target)
    return digest


def recorded_sha256(weights: Path) -> str:
    """The hash recorded for ``weights``; :class:`CheckpointError` when there is none."""
    record = record_path(weights)
    if not record.is_file():
        raise CheckpointError(
            f"{weights}: no recorded sha256 ({record.name} is missing), so its integrity cannot "
            f"be checked; use the run directory galaxy-train wrote, or if you trust the file "
            f"record it with: sha256sum {weights.name} > {record.name}"
        )
    text = record.read_text(encoding="utf-8", errors="replace").strip()
    match = _LINE.match(text.splitlines()[0] if text else "")
    if match is None or match.group(2) != weights.name:
        raise CheckpointError(
            f"{record}: not a sha256sum line for {weights.name}; rewrite it with: "
            f"sha256sum {weights.name} > {record.name}"
        )
    return match.group(1)


def verify_weights(weights: Path) -> str:
    """The sha256 of ``weights`` when it matches the run's record; else :class:`CheckpointError`."""
    weights = Path(weights)
    expected = recorded_sha256(weights)
    actual = sha256_of(weights)
    if actual != expected:
        raise CheckpointError(
            f"{weights}: sha256 {actual[:12]}… differs from the {expected[:12]}… recorded when "
            "it was written: the weights were modified or corrupted; restore them from the "
            "training run (or retrain), never deploy them"
        )
    return actual
