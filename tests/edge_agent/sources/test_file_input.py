"""Reading a watched entry: regular files only, never through a link, never opening a FIFO."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from edge_agent.contract.decode import DecodeError
from edge_agent.sources import file_input
from edge_agent.sources.file_input import NotRegularFileError, read_regular_file


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    p.write_bytes(b"12345")
    assert read_regular_file(p, 1024) == b"12345"


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(bytes(2000))
    with pytest.raises(DecodeError, match="max_bytes=1999") as info:
        read_regular_file(p, 1999)
    assert info.value.reason == "oversized"


def test_links_are_refused_whatever_they_point_to(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    for name, target in (("etc.png", Path("/etc/hostname")), ("img.png", outside)):
        link = tmp_path / name
        link.symlink_to(target)
        with pytest.raises(NotRegularFileError, match=f"symbolic link to {target}") as info:
            read_regular_file(link, 1024)
        assert info.value.reason == "not_regular_file" and not info.value.is_directory


def test_special_files_are_refused_without_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], *args: int) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args)

    monkeypatch.setattr(file_input.os, "open", spy)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    folder = tmp_path / "dir.png"
    folder.mkdir()
    sock_path = tmp_path / "sock.png"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    try:
        cases = {fifo: "FIFO", folder: "directory", sock_path: "socket"}
        device = tmp_path / "null.png"
        try:
            os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
            cases[device] = "character device"
        except PermissionError:
            pass  # not root: the other kinds still run
        for path, kind in cases.items():
            with pytest.raises(NotRegularFileError, match=kind) as info:
                read_regular_file(path, 1024)
            assert info.value.is_directory == (path == folder)
    finally:
        sock.close()
    assert opened == []


def test_a_swap_between_check_and_open_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry checked by lstat is replaced just before open: a link, a FIFO, another file."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    real_open = os.open
    swap: list[str] = []

    def swap_then_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        p = Path(path)
        other = p.with_name("other")
        if swap[0] == "link":
            other.symlink_to(outside)
        elif swap[0] == "fifo":
            os.mkfifo(other)
        else:
            other.write_bytes(b"another file")
        os.replace(other, p)  # what a writer's rename does; the new entry has its own inode
        return real_open(path, flags, *args)

    monkeypatch.setattr(file_input.os, "open", swap_then_open)
    for kind, error, match in (
        ("link", NotRegularFileError, "symbolic link"),
        ("fifo", NotRegularFileError, "FIFO"),
        ("file", FileNotFoundError, "replaced while being opened"),
    ):
        swap[:] = [kind]
        p = tmp_path / f"{kind}.png"
        p.write_bytes(b"checked")
        with pytest.raises(error, match=match):
            read_regular_file(p, 1024)
