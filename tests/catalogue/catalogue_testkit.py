"""Helpers of the catalogue tests: agent-shaped payloads, a real PostgreSQL, a publisher.

The payloads follow the agent's v2 schemas (edge_agent/schemas) and are checked against them
on the way in, so a drift between these builders and the contract fails the tests.
PostgreSQL is a real server in a temporary cluster on a unix socket (``initdb`` + ``pg_ctl``);
as root it runs as the ``postgres`` system user (the server refuses to run as root).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from required_tools import missing

from catalogue.pg_temp import find_pg_bin
from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.local_run import watched_folder_config

SHA = "ab" * 32


def msg_id(device: str, n: int) -> str:
    return hashlib.sha256(f"{device}|{n}".encode()).hexdigest()[:32]


def iso(seconds: float) -> str:
    t = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(seconds * 1000) % 1000:03d}Z"


def classification(
    device: str,
    n: int,
    class_id: int | None = None,
    confidence: float = 0.8,
    at: float = 1_780_000_000.0,
    **extra: Any,
) -> dict[str, Any]:
    """A v2 classification as the agent publishes it (``extra``: further fields)."""
    cid = n % 10 if class_id is None else class_id
    rest = (1.0 - confidence) / 9
    probs = [round(confidence if i == cid else rest, 6) for i in range(10)]
    body = {
        "schema_version": 2,
        "type": "classification",
        "device_id": device,
        "id": msg_id(device, n),
        "source": "inbox",
        "frame_ref": f"frame-{n:05d}.png",
        "received_at": iso(at + n),
        "classified_at": iso(at + n + 0.25),
        "label": CLASS_NAMES[cid],
        "class_id": cid,
        "confidence": probs[cid],
        "probabilities": probs,
        "top_k": [{"class_id": cid, "label": CLASS_NAMES[cid], "probability": probs[cid]}],
        "uncertain": confidence < 0.5,
        "model": {"name": "mobilevit_s", "sha256": SHA, "precision": "fp32"},
        "latency_ms": {"infer": 10.0, "total": 20.0},
    }
    body.update(extra)
    return body


def error(device: str, n: int) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "type": "error",
        "device_id": device,
        "id": msg_id(device, 100_000 + n),
        "source": "inbox",
        "frame_ref": f"broken-{n}.png",
        "reason": "corrupt",
        "detail": "PNG decoder: image data truncated",
        "quarantined_to": f"/var/lib/galaxy-edge/quarantine/broken-{n}.png",
        "at": iso(1_780_000_000.0 + n),
    }


def status(device: str, state: str = "online") -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 2,
        "type": "status",
        "device_id": device,
        "state": state,
        "agent_version": "0.1.0",
        "model": {"name": "mobilevit_s", "sha256": SHA, "precision": "fp32"},
        "classes": list(CLASS_NAMES),
    }
    if state == "online":
        body["at"] = iso(1_780_000_000.0)
    return body


def stats(device: str, fps: float = 2.5, outbox_depth: int = 3) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "type": "stats",
        "device_id": device,
        "at": iso(1_780_000_100.0),
        "uptime_s": 100.0,
        "interval_s": 10.0,
        "frames": {"in": 50, "out": 48, "errors": 2},
        "interval_frames": {"in": 25, "out": 25, "errors": 0},
        "rates": {"fps_in": fps, "fps_out": fps},
        "latency_ms": {"infer": {"p50": 10.0, "p99": 20.0, "max": 21.0}},
        "queue_depth": 0,
        "frames_dropped": {},
        "outbox": {"depth": outbox_depth, "bytes": 1000, "dropped": {"bytes": 0, "age": 0}},
        "mqtt": {"published": 50, "acked": 47, "resent": 0, "rejected": 0, "connects": 1},
    }


def to_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def tiny_jpeg(seed: int = 0) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    assert ok
    return bytes(buf)


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK (the agent's side, without the agent)."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in items]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Any, timeout: float = 20.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


# --- PostgreSQL ------------------------------------------------------------------------------


def require_postgres() -> None:
    """Skip without PostgreSQL or psycopg, except under CI, where it fails."""
    problem = None
    if find_pg_bin() is None:
        problem = "PostgreSQL is not installed (apt-get install -y postgresql postgresql-15-q3c)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (pip install 'galaxy-edge[catalogue]')"
    if problem is not None:
        missing(problem)


# --- a real agent -----------------------------------------------------------------------------


def build_tiny_bundle(work: Path) -> Path:
    """A tiny ONNX classifier (average pool + linear) built into a bundle by ``build-engine``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_agent.contract.preprocess import DEFAULT_SPEC

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    size = DEFAULT_SPEC.input_size
    cells = (size // 32) ** 2 * 3
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["input"], ["p"], kernel_shape=[32, 32], strides=[32, 32]
            ),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W", "B"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(rng.normal(0, 1, (cells, 10)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.normal(0, 0.1, (10,)).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(work / "tiny.onnx"))
    (work / "spec.json").write_text(DEFAULT_SPEC.model_dump_json())
    bundle = work / "bundle"
    subprocess.run(
        [
            sys.executable, "-m", "build_engine.cli", "--onnx", str(work / "tiny.onnx"),
            "--preprocess-spec", str(work / "spec.json"), "--backend", "onnxruntime",
            "--precision", "fp32", "--out", str(bundle), "--no-progress",
        ],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return bundle


def agent_yaml(work: Path, bundle: Path, host: str, port: int, device: str) -> Path:
    """An agent config watching ``work/inbox`` with thumbnails on."""
    (work / "inbox").mkdir(parents=True, exist_ok=True)
    config = watched_folder_config(
        work,
        bundle,
        port,
        device_id=device,
        stats_interval_s=0.5,
        pipeline={"max_batch": 4, "max_wait_ms": 10, "intra_op_threads": 1},
        mqtt={"host": host, "thumbnails": {"enabled": True, "size": 128}},
    )
    path = work / "agent.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path
