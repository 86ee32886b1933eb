"""Messages per second into the catalogue: SQLite and PostgreSQL, one writer and two.

Every configuration runs against the same private mosquitto (a free loopback port) and, for
PostgreSQL, a throw-away cluster (``catalogue.pg_temp``) with the q3c index. The writers are
real ``galaxy-catalogue run`` processes (two: a ``$share/<group>/...`` shared subscription);
a publisher sends N agent-shaped v2 classifications from 4 devices at QoS 1 with up to 1000 in
flight. Two ways to time it:

- ``live``: the writers run while the publisher publishes; the rate is N divided by the time from
  the first publish to the moment the database holds N rows. Publisher, broker, writers and
  database share the CPUs, so the publisher's own rate (all PUBACKs) is printed beside it.
- ``backlog``: the N messages are queued in the writers' broker sessions while the writers are
  down (what happens after a writer outage), then drained; the rate counts from the first stored
  row to the last: the writers alone, start-up excluded.

Repeats give a median. Usage::

    python bench/bench_catalogue.py [--messages 10000] [--repeats 3] [--modes live,backlog]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
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
from edge_agent.local_run import start_mosquitto

DEVICES = ("jetson-01", "jetson-02", "jetson-03", "jetson-04")


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
        self.proc, self.port = start_mosquitto(
            work,
            options=["max_inflight_messages 1000", "max_queued_messages 1000000", "user root"],
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_writers(
    count: int, url: str, port: int, work: Path, group: str, expiry: int = 0
) -> list[subprocess.Popen[bytes]]:
    """``count`` writer processes (a shared group when more than one), once all subscribed."""
    procs = []
    log = work / f"writers-{uuid.uuid4().hex[:6]}.log"
    for i in range(count):
        cmd = [
            sys.executable, "-m", "catalogue", "--log-level", "INFO", "run", "--database", url,
            "--port", str(port), "--client-id", f"bench-{group}-{i}",
            "--session-expiry", str(expiry),
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


def live_run(url: str, writers: int, n: int, port: int, work: Path) -> dict[str, Any]:
    """Writers running, then N published: stored rate with the publisher on the same CPUs."""
    procs = start_writers(writers, url, port, work, uuid.uuid4().hex[:8])
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
    return {"rate": n / total_s, "publisher_rate": n / pub_s}


def backlog_run(url: str, writers: int, n: int, port: int, work: Path) -> dict[str, Any]:
    """N queued in the writers' sessions while they are down, then drained: the writers alone.

    The rate counts from the first stored row to the last, so start-up is not in it.
    """
    group = uuid.uuid4().hex[:8]
    stop_writers(start_writers(writers, url, port, work, group, expiry=3600))  # the sessions
    pub_s = publish(port, n)
    procs = start_writers(writers, url, port, work, group, expiry=3600)
    store = open_store(url)
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 600
        while True:
            count = store.count()
            now = time.perf_counter()
            if first is None and count > 0:
                first = (now, count)
            if count >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} of {n} rows after 600 s")
            time.sleep(0.02)
        assert first is not None
        rate = (n - first[1]) / max(1e-9, now - first[0])
    finally:
        store.close()
        stop_writers(procs)
    return {"rate": rate, "publisher_rate": n / pub_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the raw runs here")
    parser.add_argument("--modes", default="live,backlog", help="live, backlog or both")
    args = parser.parse_args(argv)
    n = args.messages - args.messages % len(DEVICES)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    broker = Broker(work)
    pg = TemporaryPostgres().start()
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeats):
            for db in ("sqlite", "postgres"):
                for writers in (1, 2):
                    for mode in modes:
                        if db == "sqlite":
                            url = f"sqlite:///{work / f'cat-{rep}-{writers}-{mode}.sqlite3'}"
                        else:
                            url = pg.create_database()
                        fn = live_run if mode == "live" else backlog_run
                        run = {"db": db, "writers": writers, "mode": mode, "messages": n}
                        run.update(fn(url, writers, n, broker.port, work))
                        runs.append(run)
                        print(
                            f"run {rep + 1}: {db:<8} {writers} writer(s) {mode:<7}: "
                            f"{run['rate']:7.0f} msg/s stored (publisher "
                            f"{run['publisher_rate']:7.0f} msg/s)",
                            flush=True,
                        )
    finally:
        pg.stop()
        broker.stop()
    print(f"\n{n} messages, median of {args.repeats} runs (msg/s stored; publisher msg/s)")
    print("| database | writers | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for db in ("sqlite", "postgres"):
        for writers in (1, 2):
            cells = []
            for mode in modes:
                sel = [r for r in runs if (r["db"], r["writers"], r["mode"]) == (db, writers, mode)]
                rate = statistics.median(r["rate"] for r in sel)
                pub = statistics.median(r["publisher_rate"] for r in sel)
                cells.append(f"{rate:.0f} ({pub:.0f})")
            print(f"| {db} | {writers} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
