"""``edge-agent check``: everything that can be verified before starting, one line per problem.

Config (every mistake with its line), bundle (hashes, device, loadable by its backend), the
folders the agent writes, the MQTT password, and one connection to the broker. Returns the list
of problems so :mod:`edge_agent.cli` prints them, and (:func:`check_report`) the exit code they
call for: 2 for any config problem, else 4 for a bundle problem, else 1 (the broker).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.agent import load_backend
from edge_agent.config import AgentConfig, ConfigError, MqttConfig, OutboxConfig, load_config
from edge_agent.contract import exit_codes
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.mqtt_connection import describe_connect_error, describe_refusal, new_client
from edge_agent.sources.base import SourceError
from edge_agent.sources.factory import SCHEMES, dir_path


def probe_broker(config: MqttConfig, timeout_s: float = 5.0) -> str | None:
    """Connect once and disconnect; ``None`` when the broker accepted us, else why not.

    The same words as the agent's log (:mod:`edge_agent.mqtt_connection`): a TLS verification
    failure says so and names ``mqtt.tls.ca_file``, a refused CONNACK names the credentials.
    """
    secret = config.password()
    client = new_client(
        config,
        f"{config.client_id or 'galaxy-edge'}-check-{os.getpid()}",
        persistent_session=False,
        password=secret.get_secret_value() if secret is not None else None,
    )
    outcome: list[str | None] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        outcome.append(describe_refusal(reason, config) if reason.is_failure else None)
        done.set()

    def on_disconnect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if not done.is_set():  # closed before any CONNACK
            outcome.append(
                f"the broker at {config.host}:{config.port} closed the connection before "
                f"answering ({reason}); "
                + (
                    "it may require a client certificate (mqtt.tls.cert_file, key_file)"
                    if config.tls is not None
                    else "does it expect TLS on this port (mqtt.tls)?"
                )
            )
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(config.host, config.port, keepalive=config.keepalive)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return f"mqtt: {describe_connect_error(exc, config)}"
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return f"mqtt: no CONNACK from {config.host}:{config.port} within {timeout_s:.0f} s"
        return f"mqtt: {outcome[0]}" if outcome[0] else None
    finally:
        client.disconnect()
        client.loop_stop()


def _outbox_room(outbox: OutboxConfig) -> str | None:
    """Whether the outbox's file system has room for its reserve and as much again: below
    that, the agent starts with a full outbox (back-pressure: no frames taken in)."""
    folder = outbox.path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    reserve = Path(f"{outbox.path}.reserve")
    held = reserve.stat().st_size if reserve.is_file() else 0
    free = st.f_bavail * st.f_frsize + held
    need = max(2 * outbox.reserve_bytes, 1024 * 1024)
    if free >= need:
        return None
    return (
        f"mqtt.outbox.path: only {free / 2**20:.1f} MiB free on the file system of {folder} "
        f"(the outbox needs {need / 2**20:.1f} MiB: twice mqtt.outbox.reserve_bytes); the agent "
        "would start with its outbox full and take no frames in; free space there"
    )


def _writable(path: Path, what: str) -> str | None:
    target = path
    while not target.exists() and target != target.parent:
        target = target.parent
    if not os.access(target, os.W_OK):
        return f"{what}: {path} is not writable by this user; fix permissions or the path"
    return None


@dataclass
class CheckReport:
    """The problems found, one line each, and the exit code they call for."""

    problems: list[str] = field(default_factory=list)
    config: bool = False  # any problem of the config itself (keys, folders, credentials)
    bundle: bool = False

    @property
    def exit_code(self) -> int:
        if self.config:
            return exit_codes.USAGE
        if self.bundle:
            return exit_codes.INVALID_BUNDLE
        return exit_codes.FAILURE if self.problems else exit_codes.OK


def check(config_path: Path, *, broker: bool = True) -> list[str]:
    """Every problem found, one line each; empty when the agent can start."""
    return check_report(config_path, broker=broker).problems


def check_report(config_path: Path, *, broker: bool = True) -> CheckReport:
    """:func:`check` with the exit code its problems call for."""
    report = CheckReport()
    try:
        config: AgentConfig = load_config(config_path)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        report.config = True
        return report
    problems = report.problems
    for sc in config.sources:
        if sc.scheme not in SCHEMES:
            problems.append(
                f"{sc.uri}: unknown source scheme {sc.scheme!r}; use one of {', '.join(SCHEMES)}"
            )
        elif sc.scheme == "dir":
            try:
                folder = dir_path(sc.uri)
            except SourceError as exc:
                problems.append(str(exc))
                continue
            if not folder.is_dir():
                problems.append(f"{sc.uri}: {folder} is not a folder; create it or fix the uri")
    for what, path in (
        ("state_dir", config.state_dir),
        ("quarantine_dir", config.quarantine_dir),
        ("mqtt.outbox.path", config.mqtt.outbox.path.parent),
    ):
        problem = _writable(path, what)
        if problem:
            problems.append(problem)
    report.config = bool(problems)
    room = _outbox_room(config.mqtt.outbox)
    if room:
        problems.append(room)
    try:
        _, backend = load_backend(config)
        backend.close()
    except ConfigError as exc:  # decode.stretch/fits contradict what the bundle's model needs
        problems.extend(exc.problems)
        report.config = True
    except GalaxyEdgeError as exc:
        problems.append(f"bundle {config.bundle}: {exc}")
        report.bundle = True
    try:
        config.mqtt.password()
    except ConfigError as exc:
        problems.extend(exc.problems)
        report.config = True
        return report
    if broker:
        try:
            problem = probe_broker(config.mqtt)
        except GalaxyEdgeError as exc:  # MqttError: a TLS file or user name is wrong
            problem = str(exc)
        if problem:
            problems.append(problem)
    return report
