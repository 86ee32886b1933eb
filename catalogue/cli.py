"""``galaxy-catalogue``: run the writer, query and export the catalogue, serve the live page.

Thin on purpose: parsing, logging, signals, and turning typed errors into one-line messages and
exit codes (0 ok, 1 runtime failure, 2 bad settings or usage).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError

from catalogue import __version__
from catalogue.config import WriterSettings
from catalogue.errors import CatalogueError, QueryError
from catalogue.store import Cone, Query, open_store
from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.errors import GalaxyEdgeError

log = logging.getLogger("galaxy-catalogue")
DEFAULT_DB = "sqlite:///catalogue.sqlite3"


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", default=DEFAULT_DB, help="sqlite:///PATH or postgresql://...")
    p.add_argument(
        "--cone",
        nargs=3,
        type=float,
        metavar=("RA", "DEC", "RADIUS"),
        help="within RADIUS degrees of (RA, DEC) in degrees (ICRS)",
    )
    p.add_argument("--label", choices=CLASS_NAMES, metavar="LABEL", help="a Galaxy10 class name")
    p.add_argument("--device", help="one device id")
    p.add_argument("--since", help="classified at or after this ISO 8601 time (UTC if no zone)")
    p.add_argument("--until", help="classified before this ISO 8601 time (UTC if no zone)")
    p.add_argument("--min-confidence", type=float, help="confidence at least this (0-1)")
    p.add_argument("--limit", type=int, help="at most this many rows")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galaxy-catalogue", description="galaxy-edge catalogue: MQTT -> database -> files"
    )
    parser.add_argument("--version", action="version", version=f"galaxy-catalogue {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="subscribe and write the catalogue (until SIGTERM)")
    run.add_argument("--config", type=Path, help="YAML settings (flags override them)")
    run.add_argument("--database", help=f"sqlite:///PATH or postgresql://... ({DEFAULT_DB})")
    run.add_argument("--host", help="MQTT broker host (localhost)")
    run.add_argument("--port", type=int, help="MQTT broker port (1883)")
    run.add_argument("--prefix", help="the agents' topic prefix (galaxy-edge)")
    run.add_argument("--client-id", help="stable per writer: its broker session's name")
    run.add_argument("--shared-group", help="share the stream with other writers ($share/G/...)")
    run.add_argument("--session-expiry", type=int, help="seconds the broker keeps the session")
    run.add_argument("--username", help="broker user name")
    run.add_argument("--password-file", type=Path, help="file holding the broker password")
    run.add_argument("--extra-kind", action="append", help="store this topic kind too (repeat)")
    run.add_argument("--http", help="serve the live page on HOST:PORT, e.g. 127.0.0.1:8080")

    q = sub.add_parser("query", help="print matching classifications as JSON Lines")
    _filters(q)

    ex = sub.add_parser("export", help="write matching classifications to a file")
    _filters(ex)
    ex.add_argument("out", type=Path, help="output file (.fits .vot .parquet .csv)")
    ex.add_argument("--format", choices=("fits", "votable", "parquet", "csv"))

    srv = sub.add_parser("serve", help="serve the live page over an existing catalogue")
    srv.add_argument("--database", default=DEFAULT_DB)
    srv.add_argument("--http", default="127.0.0.1:8080", help="HOST:PORT")
    return parser


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-01T08:00:00Z)") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _query(args: argparse.Namespace) -> Query:
    return Query(
        cone=Cone(*args.cone) if args.cone else None,
        label=args.label,
        device=args.device,
        since=_time(args.since),
        until=_time(args.until),
        min_confidence=args.min_confidence,
        limit=args.limit,
    )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise CatalogueError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def _settings(args: argparse.Namespace) -> WriterSettings:
    raw: dict[str, Any] = {}
    if args.config is not None:
        try:
            raw = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CatalogueError(f"{args.config}: cannot read the settings: {exc}") from exc
    broker = raw.setdefault("broker", {})
    for flag, key in (
        ("host", "host"),
        ("port", "port"),
        ("prefix", "topic_prefix"),
        ("client_id", "client_id"),
        ("shared_group", "shared_group"),
        ("session_expiry", "session_expiry_s"),
        ("username", "username"),
        ("password_file", "password_file"),
        ("extra_kind", "extra_kinds"),
    ):
        if getattr(args, flag) is not None:
            broker[key] = getattr(args, flag)
    if args.database is not None:
        raw["database"] = args.database
    if args.http is not None:
        raw["http"] = args.http
    return WriterSettings.model_validate(raw)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    stop.wait()


def _run(args: argparse.Namespace) -> int:
    from catalogue.web.server import LivePage
    from catalogue.writer import CatalogueWriter

    settings = _settings(args)
    password = None
    if settings.broker.password_file is not None:
        try:
            password = settings.broker.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CatalogueError(f"cannot read the password file: {exc}") from exc
    writer = CatalogueWriter(settings, password=password)
    writer.start()
    page = None
    if settings.http:
        host, port = _host_port(settings.http)
        page = LivePage(lambda: open_store(settings.database), host, port, writer.counters.snapshot)
        page.start()
        log.info("live page on %s", page.url)
    log.info("writing %s from %s:%s", settings.database, settings.broker.host, settings.broker.port)
    try:
        _wait_for_signal()
    finally:
        if page is not None:
            page.stop()
        writer.stop()
        log.info("stopped: %s", json.dumps(writer.counters.snapshot()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from catalogue.web.server import LivePage

    open_store(args.database).close()  # fail now, with a clear message, if it cannot open
    host, port = _host_port(args.http)
    page = LivePage(lambda: open_store(args.database), host, port)
    page.start()
    log.info("live page on %s", page.url)
    try:
        _wait_for_signal()
    finally:
        page.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "serve":
            return _serve(args)
        query = _query(args)
        store = open_store(args.database)
        try:
            rows = store.query(query)
        finally:
            store.close()
        if args.command == "query":
            for row in rows:
                sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
            return 0
        from catalogue.export import export

        fmt = export(rows, args.out, args.format)
        print(f"{len(rows)} rows -> {args.out} ({fmt})", file=sys.stderr)
        return 0
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            print(f"galaxy-catalogue: {where}: {err['msg']}", file=sys.stderr)
        return 2
    except QueryError as exc:
        print(f"galaxy-catalogue: {exc}", file=sys.stderr)
        return 2
    except (GalaxyEdgeError, OSError) as exc:
        print(f"galaxy-catalogue: {exc}", file=sys.stderr)
        return 1
