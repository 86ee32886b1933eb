"""The demo with its other end: agent -> MQTT -> catalogue writer -> live page, on one machine.

``scripts/demo-live`` builds the demo model into an ONNX Runtime bundle (as ``scripts/demo``
does), starts a private mosquitto, ``galaxy-catalogue run`` with its live page, and
``edge-agent`` with thumbnails on; then drops the real Galaxy10 frames of ``examples/frames``
into the watched folder one by one, so the page fills while you watch. It keeps running until
Ctrl-C (``--exit`` to stop once every frame is catalogued; ``--screenshot PNG`` to photograph
the page with headless Chromium first). Work files go to ``.cache/demo-live``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from demo import ROOT, VENV_BIN, build_bundle, fresh_work, start_broker, write_config

from edge_agent.local_run import land, stop_process, watched_folder_config


def state(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url + "api/state", timeout=5) as r:
            return dict(json.load(r))
    except (OSError, ValueError):
        return {}


def wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.3)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "demo")
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of building one")
    parser.add_argument("--frames", type=Path, default=ROOT / "examples" / "frames")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "demo-live")
    parser.add_argument("--http", default="127.0.0.1:8080", help="the live page's HOST:PORT")
    parser.add_argument("--every", type=float, default=0.7, help="seconds between frames")
    parser.add_argument("--exit", action="store_true", help="stop once all are catalogued")
    parser.add_argument("--screenshot", type=Path, help="photograph the page (implies --exit)")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    fresh_work(work)
    (work / "catalogue.sqlite3").unlink(missing_ok=True)
    bundle = args.bundle
    if bundle is None:
        bundle = work / "bundle"
        build_bundle(args.model, bundle, "demo-live")

    log = (work / "processes.log").open("wb")
    broker, port = start_broker(work, log, "demo-live")
    procs = [broker]
    page = f"http://{args.http}/"
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(VENV_BIN / "galaxy-catalogue"),
                    "run",
                    "--database",
                    f"sqlite:///{work / 'catalogue.sqlite3'}",
                    "--port",
                    str(port),
                    "--client-id",
                    "demo-live",
                    "--http",
                    args.http,
                ],
                stdout=log,
                stderr=log,
            )
        )
        config = watched_folder_config(
            work,
            bundle,
            port,
            device_id="demo",
            stats_interval_s=2,
            mqtt={"thumbnails": {"enabled": True, "size": 128}},
        )
        procs.append(
            subprocess.Popen(
                [str(VENV_BIN / "edge-agent"), "run", "--config", str(write_config(config, work))],
                stdout=log,
                stderr=log,
            )
        )
        online = wait(
            lambda: any(d.get("state") == "online" for d in state(page).get("devices", [])), 90
        )  # type: ignore[union-attr]
        if not online:
            print(f"demo-live: error: the agent did not come online; see {work}/processes.log")
            return 1
        print(f"demo-live: open {page} in a browser; dropping the frames of {args.frames}")
        frames = sorted(args.frames.glob("*.jpg"))
        for frame in frames:
            land(work / "inbox", frame.name, frame.read_bytes())
            time.sleep(args.every)
        done = wait(
            lambda: state(page).get("totals", {}).get("classifications") == len(frames),
            120,  # type: ignore[union-attr]
        )
        print(f"demo-live: {state(page).get('totals')} in {work / 'catalogue.sqlite3'}")
        if args.screenshot:
            time.sleep(3)  # one more stats report on the page
            chromium = shutil.which("chromium") or "chromium"
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={work / 'chromium'}",
                    "--window-size=1280,860",
                    "--virtual-time-budget=4000",
                    f"--screenshot={args.screenshot.resolve()}",
                    page,
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(f"demo-live: screenshot in {args.screenshot}")
        if args.exit or args.screenshot:
            return 0 if done else 1
        print("demo-live: running; Ctrl-C to stop")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for proc in reversed(procs):
            stop_process(proc, 30)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
