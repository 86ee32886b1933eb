"""Messages per second into the catalogue: SQLite and PostgreSQL, one writer and two.

Every configuration runs against the same private mosquitto (a free loopback port) and, for
PostgreSQL, a throw-away cluster (``catalogue.pg_temp``) with the q3c index. The writers are
real ``galaxy-catalogue run`` processes (two: a ``$share/<group>/...`` shared subscription);
a publisher sends N agent-shaped v2 classifications from 4 devices at QoS 1 as fast as the
broker acknowledges them (a window of 1000 in flight). A run's rate is N divided by the time
from the first publish to the moment the database holds N rows; the publisher's own rate
(all PUBACKs) is printed beside it, so a run limited by the publisher shows as such.
Repeats give a median. Usage::

    python bench/bench_catalogue.py [--messages 20000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from catalogue.pg_temp import TemporaryPostgres
from catalogue.store import open_store
from edge_agent.contract.classes import CLASS_NAMES

DEVICES = ("jetson-01", "jetson-02", "jetson-03", "jetson-04")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def payload(device: str, n: int) -> bytes:
    cid = n % 10
    probs = [round(0.91 if i == cid else 0.01, 6) for i in range(10)]
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_780_000_000 + n)) + ".000Z"
    body = {
        "schema_version": 2,
        "type": "classification",
        "device_id": device,
        "id": hashlib.sha256(f"{device}|{n}".encode()).hexdigest()[:32],
        "source": "inbox",
        "frame_ref": f"/data/incoming/frame-{n:07d}.fits@1780000000000000000",
        "received_at": ts,
        "classified_at": ts,
        "label": CLASS_NAMES[cid],
        "class_id": cid,
        "confidence": probs[cid],
        "probabilities": probs,
        "top_k": [{"class_id": cid, "label": CLASS_NAMES[cid], "probability": probs[cid]}],
        "uncertain": False,
        "model": {"name": "mobilevit_s", "sha256": "ab" * 32, "precision": "fp16"},
        "latency_ms": {"decode": 3.0, "preprocess": 1.0, "infer": 11.0, "total": 20.0},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class Broker:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 1000\nmax_queued_messages 1000000\nuser root\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_writers(count: int, url: str, port: int, work: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    log = work / "writers.log"
    group = uuid.uuid4().hex[:8]
    for i in range(count):
        cmd = [
            sys.executable, "-m", "catalogue", "--log-level", "INFO", "run", "--database", url,
            "--port", str(port), "--client-id", f"bench-{group}-{i}", "--session-expiry", "0",
        ]  # fmt: skip
        if count > 1:
            cmd += ["--shared-group", group]
        procs.append(subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count(f"bench-{group}-") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"writers did not subscribe: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return procs


def stop_writers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(30)


def publish(port: int, n: int) -> float:
    """Publish n messages at QoS 1 with up to 1000 in flight; returns seconds to all PUBACKs."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )  # fmt: skip
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    bodies = [
        (f"galaxy-edge/{d}/classifications", payload(d, i)) for i in range(n // 4) for d in DEVICES
    ]
    t0 = time.perf_counter()
    infos = [client.publish(t, b, qos=1) for t, b in bodies]
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


def one_run(db: str, url: str, writers: int, n: int, port: int, work: Path) -> dict[str, Any]:
    procs = start_writers(writers, url, port, work)
    store = open_store(url)
    try:
        t0 = time.perf_counter()
        pub_s = publish(port, n)
        deadline = time.monotonic() + 600
        while store.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {store.count()} of {n} rows after 600 s")
            time.sleep(0.05)
        total_s = time.perf_counter() - t0
    finally:
        store.close()
        stop_writers(procs)
    return {"db": db, "writers": writers, "messages": n, "seconds": total_s, "publish_s": pub_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the raw runs here")
    args = parser.parse_args(argv)
    n = args.messages - args.messages % len(DEVICES)
    work = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    broker = Broker(work)
    pg = TemporaryPostgres().start()
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeats):
            for db in ("sqlite", "postgres"):
                for writers in (1, 2):
                    if db == "sqlite":
                        url = f"sqlite:///{work / f'cat-{rep}-{writers}.sqlite3'}"
                    else:
                        url = pg.create_database()
                    run = one_run(db, url, writers, n, broker.port, work)
                    runs.append(run)
                    print(
                        f"run {rep + 1}: {db:<8} {writers} writer(s): {n / run['seconds']:7.0f} "
                        f"msg/s stored (publisher alone {n / run['publish_s']:7.0f} msg/s)",
                        flush=True,
                    )
    finally:
        pg.stop()
        broker.stop()
    print(f"\n{n} messages, median of {args.repeats} runs")
    print("| database | writers | stored msg/s (median) | publisher msg/s (median) |")
    print("|---|---|---|---|")
    for db in ("sqlite", "postgres"):
        for writers in (1, 2):
            sel = [r for r in runs if r["db"] == db and r["writers"] == writers]
            stored = statistics.median(n / r["seconds"] for r in sel)
            pub = statistics.median(n / r["publish_s"] for r in sel)
            print(f"| {db} | {writers} | {stored:.0f} | {pub:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
