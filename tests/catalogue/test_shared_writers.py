"""Two writer processes share one stream ($share/<group>/...) into one PostgreSQL; one of them
is killed (SIGKILL) mid-stream and comes back: every result is stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from catalogue_testkit import Publisher, classification, msg_id, to_bytes, wait_until
from mqtt_broker import MosquittoBroker

from edge_agent.local_run import stop_process

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
P = "galaxy-edge"
N = 1500


def writer(broker: MosquittoBroker, url: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "catalogue", "--log-level", "INFO", "run", "--database", url,
        "--host", broker.host, "--port", str(broker.port), "--client-id", name,
        "--shared-group", "catalogue",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(d, i) for d, i in conn.execute("SELECT device, id FROM classifications")]


def subscribed(log: Path, name: str, times: int = 1) -> bool:
    return log.read_text(errors="replace").count(f"{name} subscribed to") >= times


def test_two_writers_one_killed_mid_stream_store_every_result_once(
    mosquitto: MosquittoBroker, pg_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "writers.log"
    procs = {n: writer(mosquitto, pg_url, n, log) for n in ("w1", "w2")}
    try:
        assert wait_until(lambda: all(subscribed(log, n) for n in procs), 30), log.read_text()
        pub = Publisher(mosquitto.host, mosquitto.port)
        devices = ("dev-a", "dev-b", "dev-c")
        expected = {(d, msg_id(d, n)) for d in devices for n in range(N // len(devices))}

        def publish_all() -> None:
            for n in range(N // len(devices)):
                pub.publish_many(
                    [(f"{P}/{d}/classifications", to_bytes(classification(d, n))) for d in devices]
                )
                time.sleep(0.002)

        t = threading.Thread(target=publish_all)
        t.start()
        assert wait_until(lambda: len(rows(pg_url)) >= N // 4, 60), log.read_text()
        os.kill(procs["w1"].pid, signal.SIGKILL)  # mid-stream: unacknowledged work in flight
        procs["w1"].wait()
        killed_at = len(rows(pg_url))
        t.join(120)
        pub.close()
        assert killed_at < N, "the kill came too late to be mid-stream"
        procs["w1"] = writer(mosquitto, pg_url, "w1", log)  # systemd's Restart=, same client id
        assert wait_until(lambda: len(rows(pg_url)) >= len(expected), 90), (
            f"{len(rows(pg_url))} of {len(expected)} rows; {log.read_text()[-2000:]}"
        )
        time.sleep(1.0)  # anything still arriving would be a duplicate attempt
        got = rows(pg_url)
        assert len(got) == len(expected) and set(got) == expected
    finally:
        for p in procs.values():
            stop_process(p, 20)
