"""Quarantine: where rejected inputs go, each with a ``.reason.json`` beside it.

A rejected input is never deleted: a watched file is moved (renamed when on the same file system,
copied then removed otherwise), and bytes that came from the network or a camera are written out.
The reason file says where it came from, why it was rejected and when, so an operator can fix
and re-submit it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.contract.errors import GalaxyEdgeError


class QuarantineError(GalaxyEdgeError):
    """The quarantine folder cannot take a rejected input (the input is left where it was)."""


class Quarantine:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _target(self, source: str, name: str) -> Path:
        folder = self.directory / _safe(source)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return folder / f"{stamp}-{uuid.uuid4().hex[:8]}-{_safe(name)}"

    def put_file(
        self,
        path: Path,
        *,
        source: str,
        reason: str,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Move ``path`` into quarantine; returns where it now lies."""
        try:
            target = self._target(source, Path(path).name)
            shutil.move(str(path), str(target))
        except OSError as exc:
            raise QuarantineError(
                f"{path}: cannot move into {self.directory} ({exc}); the file stays in place"
            ) from exc
        self._write_reason(target, source, str(path), reason, message, extra)
        return target

    def put_bytes(
        self,
        data: bytes,
        *,
        name: str,
        source: str,
        reason: str,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``data`` (a frame that has no file of its own) into quarantine."""
        try:
            target = self._target(source, name or "frame")
            tmp = target.with_name("." + target.name + ".part")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise QuarantineError(
                f"cannot write a rejected frame into {self.directory} ({exc})"
            ) from exc
        self._write_reason(target, source, name, reason, message, extra)
        return target

    def _write_reason(
        self,
        target: Path,
        source: str,
        original: str,
        reason: str,
        message: str,
        extra: dict[str, Any] | None,
    ) -> None:
        info = {
            "source": source,
            "original": original,
            "reason": reason,
            "message": message,
            "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        reason_path = target.with_name(target.name + ".reason.json")
        try:
            reason_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise QuarantineError(f"{reason_path}: cannot write the reason file ({exc})") from exc


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return cleaned[:120] or "input"
