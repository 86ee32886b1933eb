"""Quarantine: where rejected inputs go, each with a ``.reason.json`` beside it.

A rejected input is never deleted: a watched file is moved (renamed when on the same file system,
copied then removed otherwise), and bytes that came from the network or a camera are written out.
The reason file says where it came from, why it was rejected and when, so an operator can fix
and re-submit it.

All or nothing: every file is written under a temporary name, flushed and renamed into place,
and a step that fails (a full file system above all) removes what the earlier steps wrote, so a
failed quarantine leaves no empty or partial file behind and the input where it was. Entries
that are not regular files (links, FIFOs, devices) are only ever renamed, never opened or
copied; a folder is never moved.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from edge_agent.contract.errors import GalaxyEdgeError

_CHUNK = 1 << 20


class QuarantineError(GalaxyEdgeError):
    """The quarantine folder cannot take a rejected input (the input is left where it was).

    ``cause`` is the short reason (e.g. ``No space left on device``), for the ``errors`` message.
    """

    def __init__(self, message: str, cause: str) -> None:
        self.cause = cause
        super().__init__(message)


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


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
        """Move ``path`` into quarantine; returns where it now lies.

        Raises :class:`QuarantineError` with ``path`` untouched when it cannot be done.
        """
        path = Path(path)
        reason_path: Path | None = None
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                raise QuarantineError(
                    f"{path}: a folder is never moved into quarantine; it stays in place",
                    "a folder is never moved into the quarantine",
                )
            target = self._target(source, path.name)
            reason_path = _reason_path(target)
            _write_new(reason_path, _reason_bytes(source, str(path), reason, message, extra))
            try:
                os.rename(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV or not stat.S_ISREG(mode):
                    raise
                _copy_new(path, target)  # another file system: copy, then remove the input
                try:
                    os.unlink(path)
                except OSError:
                    _remove(target)
                    raise
        except OSError as exc:
            if reason_path is not None:
                _remove(reason_path)
            raise QuarantineError(
                f"{path}: cannot move into {self.directory} ({exc}); the file stays in place",
                _cause(exc),
            ) from exc
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
        target: Path | None = None
        try:
            target = self._target(source, name or "frame")
            _write_new(target, data)
            try:
                _write_new(
                    _reason_path(target), _reason_bytes(source, name, reason, message, extra)
                )
            except OSError:
                _remove(target)
                raise
        except OSError as exc:
            raise QuarantineError(
                f"cannot write a rejected frame into {self.directory} ({exc})", _cause(exc)
            ) from exc
        return target


def _reason_path(target: Path) -> Path:
    return target.with_name(target.name + ".reason.json")


def _reason_bytes(
    source: str, original: str, reason: str, message: str, extra: dict[str, Any] | None
) -> bytes:
    info = {
        "source": source,
        "original": original,
        "reason": reason,
        "message": message,
        "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    return (json.dumps(info, indent=2) + "\n").encode("utf-8")


def _remove(path: Path) -> None:
    """Best-effort clean-up after a failed step: its own failure must not hide the first one."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_new(target: Path, data: bytes) -> None:
    """Write ``target`` under a temporary name, fsync, rename: complete or absent."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        _remove(tmp)
        raise


def _copy_new(src: Path, target: Path) -> None:
    """Copy the regular file ``src`` (never following a link) to ``target``: complete or absent."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd_in).st_mode):
                raise OSError(errno.EINVAL, "not a regular file any more", str(src))
            fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
            try:
                while chunk := os.read(fd_in, _CHUNK):
                    _write_all(fd_out, chunk)
                os.fsync(fd_out)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        os.replace(tmp, target)
    except OSError:
        _remove(tmp)
        raise


# NAME_MAX is 255 bytes; with the stamp, the uuid and ".reason.json" / ".part" around it, a
# name cut to 120 BYTES (not characters: 120 CJK characters are 360 bytes) always fits.
_NAME_BYTES = 120


def _safe(name: str) -> str:
    """A file-name part made of letters, digits and ``._-`` (anything else, a surrogate escape
    of a name that is not UTF-8 included, becomes ``_``), at most :data:`_NAME_BYTES` bytes."""
    cleaned = "".join(
        c if (c.isalnum() and not "\ud800" <= c <= "\udfff") or c in "._-" else "_" for c in name
    ).lstrip(".")
    cut = cleaned.encode("utf-8")[:_NAME_BYTES].decode("utf-8", "ignore")
    return cut or "input"
