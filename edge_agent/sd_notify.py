"""systemd's notification protocol (sd_notify(3)) over a plain socket, no libsystemd needed.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that
variable (not under systemd, or ``Type=simple``) every call is a cheap no-op returning False,
so the agent needs no "am I under systemd" switch.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> str | bytes | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the "@".
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        # sd_notify(3) also accepts vsock:... addresses (VMs); the agent runs on the device.
        log.warning("NOTIFY_SOCKET=%s is neither a path nor @abstract; not notifying", path)
        return None
    return path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``); True when a datagram was sent.

    A failure to send is logged and returns False rather than raising: losing one STATUS line
    must not stop the pipeline. A lost WATCHDOG=1 is caught by systemd's watchdog itself.

    The send never blocks: the pipeline thread pings from its work loop, and a receiver that
    does not read (a busy PID 1, a test harness) fills the socket's queue after
    ``net.unix.max_dgram_qlen`` datagrams (10 on some hosts), after which a blocking send
    would stall classification until the receiver reads. A full queue drops the message.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode("utf-8"), socket.MSG_DONTWAIT)
    except BlockingIOError:
        log.warning("sd_notify to %r dropped: the receiver's queue is full", address)
        return False
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1: the bundle is loaded and warmed up; systemd starts the units ordered after us."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def reloading() -> bool:
    """RELOADING=1 at the start of a SIGHUP reload; send :func:`ready` when it is done."""
    return notify("RELOADING=1")


def stopping(status: str | None = None) -> bool:
    """STOPPING=1 at the start of the drain, so ``systemctl status`` says why we linger."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """STATUS=<one line> shown by ``systemctl status`` (live rates, queue and outbox depth)."""
    return notify("STATUS=" + text.replace("\n", " "))


def extend_timeout(seconds: float) -> bool:
    """EXTEND_TIMEOUT_USEC: "still starting (or stopping), give me ``seconds`` more".

    For a first TensorRT warm-up or a long drain that may outlast TimeoutStartSec= or
    TimeoutStopSec=; send it again before the extension runs out.
    """
    return notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}")


def watchdog() -> bool:
    """WATCHDOG=1: call from the pipeline loop, at least every :func:`watchdog_interval_s`."""
    return notify("WATCHDOG=1")


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """How often to send WATCHDOG=1, or None when no watchdog is armed for this process.

    systemd exports ``WATCHDOG_USEC`` (the timeout) and ``WATCHDOG_PID`` (whom it is for: a
    child that inherited the variables must not ping for its parent). Half the timeout is the
    interval sd_watchdog_enabled(3) recommends, leaving slack for a slow iteration.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        timeout_us = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog ignored", usec)
        return None
    if timeout_us <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            owner_pid = int(owner)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog ignored", owner)
            return None
        if owner_pid != (os.getpid() if pid is None else pid):
            return None
    return timeout_us / 2 / 1e6
