"""``edge-agent``: run the daemon, check a deployment, print the version.

Thin on purpose: parsing, logging set-up, signals, and turning typed errors into one-line
messages and the exit codes of :mod:`edge_agent.contract.exit_codes` (0 ok, 1 runtime failure,
2 bad config or usage, 4 stale or invalid bundle).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from edge_agent import __version__
from edge_agent.config import ConfigError, load_config
from edge_agent.contract import exit_codes
from edge_agent.contract.errors import GalaxyEdgeError, ManifestError


def build_parser() -> argparse.ArgumentParser:
    epilog = exit_codes.epilog()
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Galaxy10 classifier daemon",
        epilog=epilog,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run the daemon (systemd Type=notify)", epilog=epilog, formatter_class=raw
    )
    run.add_argument("--config", type=Path, required=True, help="YAML config file")
    chk = sub.add_parser(
        "check",
        help="validate config and bundle, try the broker",
        epilog=epilog,
        formatter_class=raw,
    )
    chk.add_argument("config_file", type=Path, nargs="?", help="YAML config file")
    chk.add_argument("--config", type=Path, help="YAML config file (same as the positional)")
    chk.add_argument("--no-broker", action="store_true", help="skip the broker connection")
    cls = sub.add_parser(
        "classify",
        help="classify files once, without a broker: JSON Lines on stdout",
        description=(
            "Print the objects the agent would publish for each file, one JSON object per "
            "line: classifications, wide-field frame summaries, errors. Progress on stderr."
        ),
        epilog=epilog,
        formatter_class=raw,
    )
    cls.add_argument("--bundle", type=Path, required=True, help="bundle directory (build-engine)")
    cls.add_argument(
        "--config", type=Path, help="agent YAML: device_id, decode, fields, pipeline settings"
    )
    cls.add_argument(
        "--sources",
        action="store_true",
        help="wide fields: find, filter and classify every galaxy (default: the config's "
        "sources[].mode; without a config, each file is one centred galaxy)",
    )
    cls.add_argument(
        "--bands",
        nargs=3,
        action="append",
        type=Path,
        default=[],
        metavar=("G", "R", "Z"),
        help="three single-band FITS files of one exposure, as one wide field (repeatable)",
    )
    cls.add_argument("files", type=Path, nargs="*", help="image or FITS files")
    return parser


def _classify(args: argparse.Namespace) -> int:
    import json

    from edge_agent.classify import OneShot  # after parsing: --help stays fast

    if not args.files and not args.bands:
        print("edge-agent classify: give files (or --bands G R Z)", file=sys.stderr)
        return exit_codes.USAGE
    missing = [p for p in [*args.files, *(p for b in args.bands for p in b)] if not p.exists()]
    if missing:
        print(f"edge-agent classify: no such file: {missing[0]}", file=sys.stderr)
        return exit_codes.USAGE
    config = None
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            for line in exc.problems:
                print(f"edge-agent: {line}", file=sys.stderr)
            return exit_codes.USAGE

    def progress(line: str) -> None:
        print(f"edge-agent classify: {line}", file=sys.stderr, flush=True)

    try:
        one = OneShot(
            args.bundle, config, fields_mode=True if args.sources else None, progress=progress
        )
    except ManifestError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exit_codes.INVALID_BUNDLE
    except ConfigError as exc:  # the config's decode settings contradict the bundle's
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except GalaxyEdgeError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exit_codes.FAILURE
    failed = 0
    jobs = [(str(p), [p]) for p in args.files] + [(str(b[0]), list(b)) for b in args.bands]
    try:
        for n, (name, paths) in enumerate(jobs, start=1):
            progress(f"[{n}/{len(jobs)}] {name}")
            try:
                bodies = list(one.run(paths[0]) if len(paths) == 1 else one.run_bands(paths))
            except OSError as exc:
                progress(f"{name}: cannot read ({exc})")
                failed += 1
                continue
            except GalaxyEdgeError as exc:
                progress(f"{name}: {exc}")
                failed += 1
                continue
            if any(b["type"] == "error" and b["reason"] in _UNREADABLE for b in bodies):
                failed += 1
            for body in bodies:
                sys.stdout.write(json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    finally:
        one.close()
    progress(f"{len(jobs) - failed} of {len(jobs)} inputs processed")
    return exit_codes.FAILURE if failed else exit_codes.OK


# An error with one of these reasons means the input was not classified at all.
_UNREADABLE = (
    "corrupt",
    "truncated",
    "oversized",
    "wrong_type",
    "unsupported",
    "not_regular_file",
    "no_data",
    "detection_failed",
)


def _run(config_path: Path) -> int:
    from edge_agent.agent import Agent  # after parsing: --help stays fast

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"edge-agent: {line}", file=sys.stderr)
        return exit_codes.USAGE
    logging.basicConfig(
        level=config.log_level,
        format="%(levelname)s %(name)s: %(message)s",  # journald adds the time
    )
    agent = Agent(config, config_path)

    def on_term(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        agent.request_reload()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.start()
    except GalaxyEdgeError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        if isinstance(exc, ManifestError):
            return exit_codes.INVALID_BUNDLE
        return exit_codes.USAGE if isinstance(exc, ConfigError) else exit_codes.FAILURE
    return agent.run()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else exit_codes.USAGE
    if args.command == "run":
        return _run(args.config)
    if args.command == "classify":
        return _classify(args)
    path = args.config or args.config_file
    if path is None:
        print("edge-agent check: give the config file (edge-agent check FILE)", file=sys.stderr)
        return exit_codes.USAGE
    from edge_agent.check import check_report

    report = check_report(path, broker=not args.no_broker)
    for line in report.problems:
        print(f"edge-agent: {line}", file=sys.stderr)
    if not report.problems:
        print(f"edge-agent: {path}: config, bundle and broker OK")
    return report.exit_code
