from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, ConfigError, load_config, parse_config

GOOD = """\
device_id: jetson-01
bundle: bundle
sources:
  - uri: dir:///srv/frames
  - uri: csi://0
    name: sky
mqtt:
  host: broker.local
  username: edge
  password_file: secret.txt
"""


def test_good_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(GOOD)
    cfg = load_config(tmp_path / "agent.yaml")
    assert isinstance(cfg, AgentConfig)
    assert cfg.bundle == tmp_path / "bundle"  # relative to the config file, not the cwd
    assert cfg.mqtt.password_file == tmp_path / "secret.txt"
    assert cfg.sources[0].policy == "block"
    assert cfg.sources[1].policy == "drop_oldest"  # a live camera
    assert cfg.sources[1].display_name == "sky"
    assert cfg.pipeline.backend == "auto"
    assert cfg.decode.stretch is None and cfg.decode.fits is None  # the bundle's pixels


def test_unknown_key_names_path_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("    name: sky\n", "    name: sky\n    queue_sise: 3\n")
    (tmp_path / "agent.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "agent.yaml")
    assert info.value.problems == [
        f"{tmp_path / 'agent.yaml'}:7: sources.1.queue_sise: unknown key "
        "(check the spelling; see the example config)"
    ]


def test_all_problems_listed_one_per_line() -> None:
    text = """\
device_id: "bad id"
bundle: /b
sources:
  - uri: dir:///x
    back_pressure: sometimes
pipeline:
  max_batch: 0
  colour: blue
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, origin="a.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("a.yaml:1: device_id: ")
    assert lines[1].startswith("a.yaml:5: sources.0.back_pressure: ")
    assert lines[2].startswith("a.yaml:7: pipeline.max_batch: ")
    assert (
        lines[3]
        == "a.yaml:8: pipeline.colour: unknown key (check the spelling; see the example config)"
    )


def test_missing_key_and_yaml_syntax() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("device_id: a\nsources: [{uri: 'dir:///x'}]\n", origin="c.yaml")
    assert info.value.problems == ["c.yaml:1: bundle: required key is missing"]
    with pytest.raises(ConfigError) as info:
        parse_config("device_id: a\n  bundle: [\n", origin="c.yaml")
    assert info.value.problems[0].startswith("c.yaml:2: not valid YAML")


def test_secret_read_from_file_never_in_repr(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("hunter2\n")
    (tmp_path / "agent.yaml").write_text(GOOD)
    cfg = load_config(tmp_path / "agent.yaml")
    secret = cfg.mqtt.password()
    assert secret is not None and secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr(cfg) and "hunter2" not in cfg.model_dump_json()


def test_secret_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace("password_file: secret.txt", "password_credential: mqtt-pass")
    cfg = parse_config(text)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        cfg.mqtt.password()
    (tmp_path / "mqtt-pass").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    secret = cfg.mqtt.password()
    assert secret is not None and secret.get_secret_value() == "s3cret"


def test_missing_password_file_names_file_not_content(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(GOOD)
    cfg = load_config(tmp_path / "agent.yaml")
    with pytest.raises(ConfigError, match=r"secret\.txt"):
        cfg.mqtt.password()


def test_duplicate_source_names() -> None:
    text = GOOD.replace("  - uri: csi://0\n    name: sky\n", "  - uri: dir:///a/frames\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, origin="d.yaml")
    assert info.value.problems == [
        "d.yaml:1: (top level): Value error, source names must be unique, repeated: dir:frames"
    ]


def test_stretch_percentiles_must_be_ordered() -> None:
    text = GOOD + "decode:\n  stretch:\n    low_percentile: 90\n    high_percentile: 10\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, origin="d.yaml")
    assert info.value.problems == [
        "d.yaml:12: decode.stretch: Value error, low_percentile must be below high_percentile"
    ]


def test_example_config_of_the_systemd_unit_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.example.yaml"
    if not example.is_file():
        pytest.skip(f"{example} is not in this checkout")
    cfg = load_config(example)
    assert cfg.mqtt.password_credential == "mqtt-password" and cfg.sources[0].policy == "block"
