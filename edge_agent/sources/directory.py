"""``dir:///path``: files dropped into a folder, picked up once complete, never forgotten.

A file counts only once it is complete: inotify's close-after-write (``FileClosedEvent``) or a
rename into the folder, from inside it or from another folder (``FileMovedEvent``), never the
creation event, so a half-written file is never read. Dotfiles and ``*.tmp``/``*.part`` are
ignored, which makes write-then-rename safe.
At start the folder is rescanned (after the observer is running, so nothing slips between the
two), and the ledger skips files already done: a restart resumes where it stopped.
The watchdog thread only records paths; a feeder thread waits on the bounded queue, so with the
``block`` policy files simply wait on disk.
Entries that are not regular files (symbolic links, FIFOs, devices, sockets, folders) are
offered too, as soon as they appear, so the pipeline refuses them with an ``errors`` message
(:mod:`edge_agent.sources.file_input` reads without following links or opening them). Each
frame carries how many earlier decodes of the file never ended (from the ledger: the agent
died in them), and keeps that count in the ledger while the pipeline decodes it.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
from collections import deque
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from edge_agent.ledger import FileKey, Ledger
from edge_agent.sources.base import Frame, FrameQueue, Source, SourceError

log = logging.getLogger(__name__)
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".reason.json")


def printable(path: Path) -> str:
    """``path`` as text for payloads and logs: itself when UTF-8 (Linux names are bytes), else
    with each undecodable byte written ``\\xNN`` (``latin1-\\xe9t\\xe9.png``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_candidate(path: Path) -> bool:
    """Whether a file name may be an input (not hidden, not a temporary of a writer)."""
    name = path.name
    return not name.startswith(".") and not name.lower().endswith(IGNORED_SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, source: DirectorySource) -> None:
        self.source = source

    def on_closed(self, event: FileClosedEvent) -> None:
        self.source.offer(Path(os.fsdecode(event.src_path)))

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        self.source.offer(Path(os.fsdecode(event.dest_path)))  # a folder too: refused with a word

    def on_created(self, event: DirCreatedEvent | FileCreatedEvent) -> None:
        # A regular file is offered at close (complete); a link, FIFO, device or folder has no
        # close event, so it is offered now, to be refused with a word.
        path = Path(os.fsdecode(event.src_path))
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return
        if not regular:
            self.source.offer(path)

    def on_any_event(self, event: FileSystemEvent) -> None:
        return None


class DirectorySource(Source):
    kind = "dir"

    def __init__(
        self,
        name: str,
        queue: FrameQueue,
        formats: tuple[str, ...],
        directory: Path,
        ledger: Ledger,
    ) -> None:
        super().__init__(name, queue, formats)
        self.directory = Path(directory)
        self.ledger = ledger
        self._paths: deque[Path] = deque()
        self._cond = threading.Condition()
        self._inflight: set[FileKey] = set()
        self._observer: InotifyObserver | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.directory.is_dir():
            raise SourceError(
                f"{self.name}: {self.directory} is not a folder; create it or fix the uri"
            )
        # Full events: a file renamed in from another folder (a receiver's staging dir) is a
        # move with an empty source, not a "created" event indistinguishable from an open().
        observer = InotifyObserver(generate_full_events=True)
        observer.schedule(_Handler(self), str(self.directory), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self.rescan()
        self._thread = threading.Thread(target=self._feed, name=f"dir-{self.name}", daemon=True)
        self._thread.start()

    def rescan(self) -> int:
        """Offer every complete file of the folder, oldest first; returns how many were offered."""
        entries = []
        with os.scandir(self.directory) as it:
            for entry in it:
                if is_candidate(Path(entry.path)):
                    try:
                        mtime_ns = entry.stat(follow_symlinks=False).st_mtime_ns
                    except OSError:
                        continue
                    entries.append((mtime_ns, entry.name, Path(entry.path)))
        entries.sort()
        for _, _, path in entries:
            self.offer(path)
        return len(entries)

    def offer(self, path: Path) -> None:
        """Note a complete file (called from the watchdog thread: never blocks)."""
        if path.parent != self.directory or not is_candidate(path):
            return
        with self._cond:
            self._paths.append(path)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._paths)

    def _feed(self) -> None:
        while not self.stopping.is_set():
            with self._cond:
                while not self._paths and not self.stopping.is_set():
                    self._cond.wait(0.5)
                if self.stopping.is_set():
                    return
                path = self._paths.popleft()
            try:
                key = FileKey.of(path)  # lstat: a link is keyed (and refused) as itself
            except OSError:
                continue  # moved away or deleted before we got to it
            with self._cond:
                if key in self._inflight:
                    continue
            entry = self.ledger.entry(key)
            if entry is not None and entry.state != "seen":
                continue  # done, or rejected and left in place
            self.ledger.mark_seen(key)
            with self._cond:
                self._inflight.add(key)
            # The mtime makes a file replaced under the same name a new frame (a new stable id).
            frame = Frame(
                source=self.name,
                frame_ref=f"{printable(path)}@{key.mtime_ns}",
                path=path,
                formats=self.formats,
                on_done=functools.partial(self._done, key),
                on_decoding=functools.partial(self.ledger.begin_decode, key),
                on_decoded=functools.partial(self.ledger.end_decode, key),
                on_left=functools.partial(self._left, key),
                interrupted=0 if entry is None else entry.interrupted,
            )
            while not self.queue.put(frame, timeout=0.5):
                if self.stopping.is_set() or self.queue.closed:
                    with self._cond:
                        self._inflight.discard(key)  # stays 'seen': the next start retries it
                    return

    def _done(self, key: FileKey) -> None:
        self.ledger.mark_done([key])
        with self._cond:
            self._inflight.discard(key)

    def _left(self, key: FileKey) -> None:
        self.ledger.mark_rejected(key)
        with self._cond:
            self._inflight.discard(key)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
