"""The demo behind ``scripts/demo``: model -> bundle -> agent -> MQTT, on real Galaxy10 frames.

Every step is the real thing: ``build-engine`` writes the bundle, Debian's mosquitto is the
broker, ``edge-agent run`` watches a folder, and this script is an ordinary MQTT consumer.
Work files go to ``.cache/demo`` (the bundle is rebuilt only when stale).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.local_run import BrokerStartError, land, start_mosquitto, watched_folder_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def fresh_work(work: Path) -> None:
    """Empty ``inbox``, ``quarantine`` and ``state`` folders in ``work`` (the bundle stays)."""
    for sub in ("inbox", "quarantine", "state"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)


def build_bundle(model: Path, bundle: Path, name: str = "demo") -> None:
    """The ONNX Runtime FP32 bundle of ``model``, rebuilt only when stale; says what it runs."""
    cmd = [str(VENV_BIN / "build-engine"), "--checkpoint", str(model), "--out", str(bundle)]
    cmd += ["--backend", "onnxruntime", "--precision", "fp32", "--if-stale"]
    print(f"{name}: $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def start_broker(
    work: Path, log: IO[bytes], name: str = "demo"
) -> tuple[subprocess.Popen[bytes], int]:
    """The private mosquitto, its output to ``log``; exits with a one-line reason if it fails."""
    try:
        return start_mosquitto(work, log=log)
    except BrokerStartError as exc:
        log.close()
        raise SystemExit(f"{name}: error: {exc}") from None


def write_config(config: dict[str, Any], work: Path) -> Path:
    path = work / "agent.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class Consumer:
    """Subscribes to the demo device's topics and keeps each classification by frame file."""

    def __init__(self, port: int) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.online = threading.Event()
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="galaxy-edge-demo-consumer"
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("galaxy-edge/demo/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        if kind not in ("classifications", "errors", "status"):
            return
        payload = json.loads(msg.payload)
        with self.lock:
            if kind == "status" and payload.get("state") == "online":
                self.online.set()
            elif kind == "classifications":
                name = Path(str(payload["frame_ref"]).split("@")[0]).name
                if name not in self.results:
                    self.results[name] = payload
                    print_row(name, payload)
            elif kind == "errors":
                self.errors.append(payload)
                print(f"  error: {payload.get('source')} {payload.get('reason')}", flush=True)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


TRUTH: dict[str, str] = {}


def print_row(name: str, payload: dict[str, Any]) -> None:
    truth = TRUTH.get(name, "?")
    label = str(payload["label"])
    mark = "ok " if label == truth else "   "
    total = float(payload.get("latency_ms", {}).get("total", float("nan")))
    print(
        f"  {mark}{name:<16} {label:<24} {float(payload['confidence']):5.2f}  "
        f"truth: {truth:<24} {total:7.0f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "demo")
    parser.add_argument("--frames", type=Path, default=ROOT / "examples" / "frames")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "demo")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for results")
    args = parser.parse_args(argv)

    with open(args.frames / "labels.csv", newline="") as fh:
        TRUTH.update({row["file"]: row["name"] for row in csv.DictReader(fh)})
    frames = sorted(args.frames / name for name in TRUTH)
    work: Path = args.work.resolve()
    fresh_work(work)
    bundle = work / "bundle"
    build_bundle(args.model, bundle)

    broker_log = open(work / "mosquitto.log", "wb")  # noqa: SIM115 - closed in finally
    broker, port = start_broker(work, broker_log)
    agent: subprocess.Popen[bytes] | None = None
    consumer: Consumer | None = None
    try:
        consumer = Consumer(port)
        config = write_config(
            watched_folder_config(work, bundle, port, device_id="demo", stats_interval_s=5), work
        )
        print(f"demo: broker on 127.0.0.1:{port}; starting edge-agent", flush=True)
        agent = subprocess.Popen([str(VENV_BIN / "edge-agent"), "run", "--config", str(config)])
        if not consumer.online.wait(60):
            print("demo: error: the agent did not come online within 60 s", file=sys.stderr)
            return 1
        print(f"demo: agent online; dropping {len(frames)} real Galaxy10 frames into the inbox")
        print(f"     {'file':<16} {'predicted':<24} {'conf':>5}  {'volunteers':<31} latency")
        for frame in frames:  # written beside, then renamed into place, as a receiver should
            land(work / "inbox", frame.name, frame.read_bytes())
        deadline = time.monotonic() + args.timeout
        while len(consumer.results) < len(frames) and time.monotonic() < deadline:
            time.sleep(0.2)
        got = len(consumer.results)
        right = sum(1 for n, p in consumer.results.items() if p["label"] == TRUTH.get(n))
        print(
            f"demo: {got}/{len(frames)} frames classified over MQTT, {right} agree with the "
            f"volunteers' label ({len(consumer.errors)} errors)"
        )
        return 0 if got == len(frames) else 1
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        if consumer is not None:
            consumer.stop()
        broker.terminate()
        broker.wait(10)
        broker_log.close()


if __name__ == "__main__":
    sys.exit(main())
