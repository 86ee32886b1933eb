from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_testkit import agent_config, make_bundle, write_config
from mqtt_broker import MosquittoBroker, free_port

from edge_agent import __version__
from edge_agent.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"edge-agent {__version__}"


def test_run_with_bad_config_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "device_id: d\nbundle: /b\nsources: [{uri: 'dir:///x'}]\nmqtt:\n  hots: x\n  port: 0\n"
    )
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"edge-agent: {cfg}:5: mqtt.hots: unknown key (check the spelling; see the example config)",
        f"edge-agent: {cfg}:6: mqtt.port: Input should be greater than or equal to 1",
    ]


def test_run_with_missing_bundle_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "a.yaml", agent_config(tmp_path, tmp_path / "nobundle", None))
    assert main(["run", "--config", str(cfg)]) == 4  # exit_codes.INVALID_BUNDLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run build-engine" in err[0]


@pytest.mark.mqtt
def test_check_ok(
    tmp_path: Path,
    tiny_bundle: Path,
    mosquitto: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = write_config(tmp_path / "a.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    assert main(["check", str(cfg)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_reports_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    (bundle / "model.onnx").write_bytes(b"tampered")
    raw = agent_config(tmp_path, bundle, None)
    raw["mqtt"]["port"] = free_port()  # nothing listens there
    raw["sources"].append({"uri": "dir:///does/not/exist"})
    cfg = write_config(tmp_path / "a.yaml", raw)
    assert main(["check", "--config", str(cfg)]) == 2  # a config problem outranks the others
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3, err
    assert "/does/not/exist is not a folder" in err[0]
    assert "sha256" in err[1] and "build-engine" in err[1]
    assert "cannot reach" in err[2] and str(raw["mqtt"]["port"]) in err[2]


def test_check_reports_manifest_json_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    cfg = write_config(tmp_path / "a.yaml", agent_config(tmp_path, bundle, None))
    assert main(["check", str(cfg), "--no-broker"]) == 4  # exit_codes.INVALID_BUNDLE
    (line,) = capsys.readouterr().err.splitlines()
    assert "manifest format 99" in line
