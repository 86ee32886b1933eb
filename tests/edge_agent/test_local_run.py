"""The set-up the demos and benchmarks share: a private broker, a watched-folder config, landing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from mqtt_broker import require_mosquitto

from edge_agent import local_run
from edge_agent.config import parse_config
from edge_agent.local_run import (
    BrokerStartError,
    land,
    start_mosquitto,
    stop_process,
    watched_folder_config,
)


def test_mosquitto_listens_on_its_port_with_the_options_given(tmp_path: Path) -> None:
    require_mosquitto()
    proc, port = start_mosquitto(tmp_path / "broker", options=["max_queued_messages 100000"])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        conf = (tmp_path / "broker" / "mosquitto.conf").read_text().splitlines()
        assert conf == [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 100000",
        ]
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_missing_mosquitto_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_run.shutil, "which", lambda _name: None)
    monkeypatch.setattr(local_run.os, "access", lambda _path, _mode: False)
    with pytest.raises(BrokerStartError, match=r"run scripts/setup"):
        start_mosquitto(tmp_path)


def test_a_broker_that_cannot_listen_is_an_error_not_a_hang(tmp_path: Path) -> None:
    require_mosquitto()
    with pytest.raises(BrokerStartError, match="did not listen"):
        start_mosquitto(tmp_path, options=["no_such_option 1"], timeout=5)


def test_the_config_is_one_the_agent_accepts_and_settings_merge(tmp_path: Path) -> None:
    cfg = watched_folder_config(
        tmp_path,
        tmp_path / "bundle",
        1883,
        device_id="demo",
        stats_interval_s=2,
        pipeline={"max_wait_ms": 20},
        mqtt={"thumbnails": {"enabled": True, "size": 128}},
        log_level="WARNING",
    )
    assert cfg["pipeline"] == {"max_batch": 8, "max_wait_ms": 20}
    assert cfg["mqtt"]["outbox"] == {"path": str(tmp_path / "state" / "outbox.sqlite3")}
    parsed = parse_config(json.dumps(cfg))
    assert parsed.device_id == "demo" and parsed.mqtt.port == 1883
    assert parsed.mqtt.thumbnails.enabled and parsed.pipeline.max_wait_ms == 20
    assert parsed.sources[0].uri == f"dir://{tmp_path / 'inbox'}"
    replaced = watched_folder_config(
        tmp_path, tmp_path, 1, device_id="d", stats_interval_s=1, sources=[]
    )
    assert replaced["sources"] == []


def test_land_renames_a_complete_file_into_the_folder(tmp_path: Path) -> None:
    target = land(tmp_path, "frame.png", b"\x89PNG...")
    assert target == tmp_path / "frame.png" and target.read_bytes() == b"\x89PNG..."
    assert os.listdir(tmp_path) == ["frame.png"]


def test_a_process_is_asked_to_stop_then_killed() -> None:
    polite = subprocess.Popen(["sleep", "60"])
    assert stop_process(polite, timeout=10) == -signal.SIGTERM
    deaf = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo deaf; exec sleep 60"], stdout=subprocess.PIPE
    )
    assert deaf.stdout is not None and deaf.stdout.readline() == b"deaf\n"  # the trap is set
    assert stop_process(deaf, timeout=0.5) == -signal.SIGKILL
    assert stop_process(deaf) == -signal.SIGKILL  # already gone: its status again
    deaf.stdout.close()
