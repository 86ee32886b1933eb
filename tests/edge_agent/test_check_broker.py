"""``edge-agent check`` says why the broker cannot be used, in the words of the agent's log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from agent_testkit import agent_config, write_config
from mqtt_broker import MosquittoBroker, free_port, require_mosquitto
from mqtt_testkit import server_pki, tls_listener
from small_filesystem import fill, small_filesystem
from tls_pki import require_openssl

from edge_agent.cli import main

pytestmark = pytest.mark.mqtt


def _check(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str], **mqtt: object
) -> tuple[int, list[str]]:
    raw = agent_config(tmp_path, bundle, None)
    raw["mqtt"].update(mqtt)
    code = main(["check", str(write_config(tmp_path / "a.yaml", raw))])
    return code, capsys.readouterr().err.strip().splitlines()


def test_no_broker(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, err = _check(tmp_path, tiny_bundle, capsys, port=port)
    assert code == 1
    assert err == [
        f"edge-agent: mqtt: cannot reach 127.0.0.1:{port} (connection refused); "
        "is the broker running, on this port?"
    ]


def test_wrong_ca_and_wrong_password(
    tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mosquitto()
    require_openssl()
    pki = tmp_path / "pki"
    other = server_pki(pki, "IP:127.0.0.1", "not the broker's CA")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "cam", "right"], check=True, timeout=30)
    broker = MosquittoBroker(
        workdir=tmp_path / "broker",
        listener_options=tls_listener(pki, f"password_file {passwd}"),
        allow_anonymous=False,
    ).start()
    secret = tmp_path / "secret"
    try:
        common = {"host": broker.host, "port": broker.port, "username": "cam"}
        secret.write_text("right\n")
        code, err = _check(
            tmp_path, tiny_bundle, capsys, tls={"ca_file": str(other)},
            password_file=str(secret), **common,
        )  # fmt: skip
        assert code == 1 and len(err) == 1
        assert err[0].startswith(
            f"edge-agent: mqtt: TLS: the broker's certificate at 127.0.0.1:{broker.port} "
            f"is not signed by mqtt.tls.ca_file ({other})"
        )
        secret.write_text("wrong\n")
        code, err = _check(
            tmp_path, tiny_bundle, capsys, tls={"ca_file": str(pki / "ca.pem")},
            password_file=str(secret), **common,
        )  # fmt: skip
        assert code == 1 and len(err) == 1
        assert "broker refused the connection" in err[0] and "user 'cam'" in err[0]
        assert "wrong" not in err[0]
        secret.write_text("right\n")
        code, err = _check(
            tmp_path, tiny_bundle, capsys, tls={"ca_file": str(pki / "ca.pem")},
            password_file=str(secret), **common,
        )  # fmt: skip
        assert (code, err) == (0, [])
    finally:
        broker.close()


def test_outbox_file_system_without_room(
    tmp_path: Path,
    tiny_bundle: Path,
    mosquitto: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with small_filesystem(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        raw = agent_config(tmp_path, tiny_bundle, mosquitto)
        raw["mqtt"]["outbox"] = {"path": str(fs / "outbox.sqlite3"), "reserve_bytes": 256 * 1024}
        cfg = write_config(tmp_path / "a.yaml", raw)
        assert main(["check", str(cfg)]) == 0  # room for the reserve and as much again
        capsys.readouterr()
        fill(fs, leave_bytes=300 * 1024)
        assert main(["check", str(cfg)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edge-agent: mqtt.outbox.path: only 0.")
        assert "take no frames in" in err[0]
