import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import sd_notify


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notify socket, named by a path."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield sock
    sock.close()


def test_ready_status_watchdog_stopping_on_a_path_socket(path_socket: socket.socket) -> None:
    assert sd_notify.ready("serving 2 sources")
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=serving 2 sources"
    assert sd_notify.watchdog()
    assert path_socket.recv(4096) == b"WATCHDOG=1"
    assert sd_notify.status("12.5 fps\nqueue 3")  # one line, whatever the caller passes
    assert path_socket.recv(4096) == b"STATUS=12.5 fps queue 3"
    assert sd_notify.reloading()
    assert path_socket.recv(4096) == b"RELOADING=1"
    assert sd_notify.stopping()
    assert path_socket.recv(4096) == b"STOPPING=1"
    assert sd_notify.extend_timeout(90)
    assert path_socket.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"galaxy-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.ready() is False
    assert sd_notify.watchdog() is False


def test_unreachable_socket_returns_false(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}
    assert sd_notify.notify("READY=1", env) is False
    assert "sd_notify" in caplog.text
    assert sd_notify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval() -> None:
    me = os.getpid()
    assert sd_notify.watchdog_interval_s({}) is None
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    env = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(me)}
    assert sd_notify.watchdog_interval_s(env) == 10.0
    # Inherited by a child process: not for it to ping.
    assert sd_notify.watchdog_interval_s({**env, "WATCHDOG_PID": str(me + 1)}) is None
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


@pytest.mark.timeout(30)  # the old blocking send hung here
def test_a_receiver_that_does_not_read_never_blocks_the_sender(
    path_socket: socket.socket,
) -> None:
    # The kernel queues at most net.unix.max_dgram_qlen datagrams (10 on some hosts, more on
    # others); past that a blocking send would wait for the receiver: the pipeline would stall.
    import time

    t0 = time.monotonic()
    results = [sd_notify.status(f"frame {i}") for i in range(3000)]
    assert time.monotonic() - t0 < 10.0
    assert results[0] is True
    assert results.count(False) > 0, "the queue never filled: the test proves nothing here"
    path_socket.setblocking(False)
    assert path_socket.recv(4096) == b"STATUS=frame 0"
