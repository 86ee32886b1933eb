"""The project's commands behave alike: galaxy-train, build-engine, build-engine-compare and
edge-agent (each subcommand) share one set of exit codes (edge_agent.contract.exit_codes),
list them in --help, answer --version, name themselves, and give every option a help line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from build_engine import cli as build_cli
from build_engine import compare
from edge_agent import __version__
from edge_agent import cli as agent_cli
from edge_agent.contract import exit_codes
from training import cli as train_cli

BIN = Path(sys.executable).parent
EXIT_LINE = "exit codes (the same in every galaxy-edge command):"

COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[..., int]]] = {
    "galaxy-train": (train_cli.build_parser, train_cli.main),
    "build-engine": (build_cli.parser, build_cli.main),
    "build-engine-compare": (compare.parser, compare.main),
    "edge-agent": (agent_cli.build_parser, agent_cli.main),
}


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _help_pages() -> list[list[str]]:
    """Every command and subcommand, as the argv that reaches its help page."""
    return [
        sub.prog.split() for make_parser, _ in COMMANDS.values() for sub in _parsers(make_parser())
    ]


def test_the_codes_are_distinct_and_documented() -> None:
    codes = [
        exit_codes.OK,
        exit_codes.FAILURE,
        exit_codes.USAGE,
        exit_codes.GATE_REFUSED,
        exit_codes.INVALID_BUNDLE,
    ]
    assert codes == [0, 1, 2, 3, 4]
    for code in codes:
        assert f"\n  {code}  " in exit_codes.EPILOG


@pytest.mark.parametrize("page", _help_pages(), ids=" ".join)
def test_every_help_page_lists_the_exit_codes(page: list[str]) -> None:
    done = subprocess.run(
        [str(BIN / page[0]), *page[1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert exit_codes.EPILOG in done.stdout
    assert "`" not in done.stdout  # no reStructuredText markup leaking into the terminal
    assert done.stdout.startswith(f"usage: {' '.join(page)}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version(name: str) -> None:
    done = subprocess.run(
        [str(BIN / name), "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == exit_codes.OK
    assert done.stdout.strip() == f"{name} {__version__}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_parser_names_its_command_and_every_option_has_help(name: str) -> None:
    make_parser, _ = COMMANDS[name]
    parser = make_parser()
    assert parser.prog == name
    missing = [
        f"{sub.prog}: {'/'.join(action.option_strings) or action.dest}"
        for sub in _parsers(parser)
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_main_returns_the_codes_instead_of_raising(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, main = COMMANDS[name]
    assert main(["--version"]) == exit_codes.OK
    assert main(["--no-such-option"]) == exit_codes.USAGE
    assert "error:" in capsys.readouterr().err


def _agent_config(tmp_path: Path, **overrides: object) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    config = {
        "device_id": "dev1",
        "bundle": str(tmp_path / "no-bundle"),
        "sources": [{"uri": f"dir://{inbox}", "name": "inbox"}],
        "quarantine_dir": str(tmp_path / "quarantine"),
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": 1},
        **overrides,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "argv",
    [["run", "--config", "{cfg}"], ["check", "{cfg}"], ["check", "--no-broker", "{cfg}"]],
    ids=" ".join,
)
def test_a_bad_config_is_a_usage_error_in_every_edge_agent_command(
    argv: list[str], tmp_path: Path
) -> None:
    """It was 1 in ``edge-agent check`` and 2 in ``edge-agent run``."""
    cfg = _agent_config(tmp_path, mqtt={"hots": "x"})
    assert agent_cli.main([a.format(cfg=cfg) for a in argv]) == exit_codes.USAGE


@pytest.mark.parametrize(
    "argv", [["run", "--config", "{cfg}"], ["check", "--no-broker", "{cfg}"]], ids=" ".join
)
def test_a_missing_bundle_is_an_invalid_bundle_in_every_edge_agent_command(
    argv: list[str], tmp_path: Path
) -> None:
    cfg = _agent_config(tmp_path)
    assert agent_cli.main([a.format(cfg=cfg) for a in argv]) == exit_codes.INVALID_BUNDLE


def test_invalid_bundles_are_4_and_usage_mistakes_2_in_the_build_tools(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert build_cli.main(["--check", str(missing)]) == exit_codes.INVALID_BUNDLE
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    broken = str(tmp_path / "broken")
    assert compare.main([broken, broken]) == exit_codes.INVALID_BUNDLE
    assert compare.main([str(missing), str(missing)]) == exit_codes.USAGE
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not looked at")
    out = str(tmp_path / "out")
    # int8 without calibration data: 1 before, though --help said 2 is usage
    assert build_cli.main(["--onnx", str(onnx), "--out", out, "--precision", "int8"]) == 2
    assert train_cli.main(["evaluate", "--checkpoint", str(missing), "--data", str(missing)]) == 2
