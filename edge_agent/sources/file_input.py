"""Reading a watched file without following links or opening anything but a regular file.

A watched folder is written by other programs, and what lands in it is not trusted: a symbolic
link to ``/etc/hostname`` or to an image outside the folder must not be read, a FIFO must never
be opened for reading (``open`` would block the pipeline until a writer comes), and a device must
not be opened at all (opening a tape rewinds it). So the entry is checked with ``lstat`` before
anything is opened, then opened with ``O_NOFOLLOW | O_NONBLOCK``, and the opened descriptor is
checked again with ``fstat``: a regular file, the same inode as the one checked. An entry swapped
for a link or a FIFO between the check and the open is caught there, never read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from edge_agent.contract.decode import DecodeError
from edge_agent.contract.errors import GalaxyEdgeError

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
NOT_REGULAR = "not_regular_file"


class NotRegularFileError(GalaxyEdgeError):
    """A watched entry that is not a regular file (a link, FIFO, device, socket or folder).

    ``kind`` names what it is, ``is_directory`` tells the quarantine not to move it.
    """

    reason = NOT_REGULAR

    def __init__(self, path: Path, kind: str, *, is_directory: bool = False) -> None:
        self.path = Path(path)
        self.kind = kind
        self.is_directory = is_directory
        super().__init__(f"{path}: {kind}, not a regular file; refused unread")


def describe_mode(mode: int) -> str:
    """What an ``st_mode`` is, in words (for messages)."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return f"a special file (mode {mode:o})"


def refuse_unless_regular(path: Path, st: os.stat_result) -> None:
    """Raise :class:`NotRegularFileError` unless ``st`` (from ``lstat``) is a regular file."""
    if stat.S_ISREG(st.st_mode):
        return
    kind = describe_mode(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            kind += f" to {os.readlink(path)}"
    raise NotRegularFileError(path, kind, is_directory=stat.S_ISDIR(st.st_mode))


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` bytes.

    Raises :class:`NotRegularFileError` for anything else (never opened when ``lstat`` already
    says so, never read when the opened descriptor says so), :class:`DecodeError` ``oversized``
    for a file above ``max_bytes`` (checked before reading, and while reading for a file that
    is still growing), ``OSError`` when the file vanished, was replaced by another regular file
    (which comes as an input of its own) or cannot be read.
    """
    before = os.lstat(path)
    refuse_unless_regular(path, before)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link after the lstat
            raise NotRegularFileError(path, "a symbolic link (swapped in after the check)") from exc
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFileError(
                path,
                f"{describe_mode(opened.st_mode)} swapped in between the check and the open",
                is_directory=stat.S_ISDIR(opened.st_mode),
            )
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            # Another regular file renamed over it: that one is a new input with its own event.
            raise FileNotFoundError(errno.ENOENT, "replaced while being opened", str(path))
        if opened.st_size > max_bytes:
            raise DecodeError(
                "oversized", f"{opened.st_size} bytes, above decode.max_bytes={max_bytes}"
            )
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise DecodeError(
                    "oversized", f"more than decode.max_bytes={max_bytes} bytes (still growing?)"
                )
        return b"".join(chunks)
    finally:
        os.close(fd)
