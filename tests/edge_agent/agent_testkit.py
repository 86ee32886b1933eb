"""Helpers of the edge agent's tests: a tiny ONNX Runtime bundle, images, agent configs.

The bundle's model is built with ``onnx.helper`` (no torch): 32x32 average pooling of the
256x256 input, flattened, then one dense layer to 10 logits. It is fast, and its answer
depends on the picture, so a wrong frame, crop or channel order changes the label.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_agent.contract.manifest import (
    Manifest,
    ModelInfo,
    official_classes,
    sha256_file,
    write_manifest,
)
from edge_agent.contract.preprocess import DEFAULT_SPEC
from edge_agent.local_run import land, merged


def build_tiny_onnx(path: Path, seed: int = 0, size: int = 256) -> None:
    rng = np.random.default_rng(seed)
    cells = (size // 32) ** 2 * 3
    weight = rng.normal(0, 1.0, (cells, 10)).astype(np.float32)
    bias = rng.normal(0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bundle(bundle_dir: Path, seed: int = 0, name: str = "tiny-test") -> Manifest:
    bundle_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = bundle_dir / "model.onnx"
    build_tiny_onnx(onnx_path, seed)
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(),
        builder="tests",
        model=ModelInfo(name=name, classes=official_classes()),
        preprocess=DEFAULT_SPEC,
        backend="onnxruntime",
        precision="fp32",
        model_file="model.onnx",
        source_onnx_sha256=sha256_file(onnx_path),
    )
    return write_manifest(bundle_dir, manifest)


def galaxy_like(seed: int, h: int = 64, w: int = 80) -> np.ndarray:
    """A small RGB uint8 picture whose colours differ per seed (different labels likely)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return img


def write_png(path: Path, rgb: np.ndarray) -> Path:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    path.write_bytes(data.tobytes())
    return path


def preload_inbox(inbox: Path, count: int, side: int) -> list[Path]:
    """``count`` PNG frames f00.png… written straight into ``inbox`` before the agent starts."""
    paths = []
    for i in range(count):
        _ok, png = cv2.imencode(".png", galaxy_like(i, side, side))
        paths.append(inbox / f"f{i:02}.png")
        paths[-1].write_bytes(png.tobytes())
    return paths


# Writes as a careful receiver does: a dotted temporary, then a rename into place.
drop_file = land


def agent_config(tmp: Path, bundle: Path, broker: Any | None, **overrides: Any) -> dict[str, Any]:
    inbox = tmp / "inbox"
    inbox.mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "device_id": "dev1",
        "bundle": str(bundle),
        "sources": [{"uri": f"dir://{inbox}", "name": "inbox"}],
        "pipeline": {"max_batch": 4, "max_wait_ms": 10, "intra_op_threads": 1},
        "quarantine_dir": str(tmp / "quarantine"),
        "state_dir": str(tmp / "state"),
        "stats_interval_s": 0.5,
        "drain_timeout_s": 5,
        "mqtt": {
            "host": broker.host if broker else "127.0.0.1",
            "port": broker.port if broker else 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "outbox": {"path": str(tmp / "state" / "outbox.sqlite3")},
        },
    }
    return merged(cfg, overrides)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class RunningAgent:
    """An in-process agent serving in a thread (``with RunningAgent(path) as agent: ...``)."""

    def __init__(self, config_path: Path) -> None:
        from edge_agent.agent import Agent
        from edge_agent.config import load_config

        self.agent = Agent(load_config(config_path), config_path)
        self.exit_code: int | None = None

    def __enter__(self) -> Any:
        import threading

        self.agent.start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self.agent

    def _run(self) -> None:
        self.exit_code = self.agent.run()

    def __exit__(self, *exc: object) -> None:
        self.agent.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "agent did not stop"


def expected_probabilities(rgb: np.ndarray, bundle: Path) -> np.ndarray:
    """What the agent must publish for ``rgb``: bare ONNX Runtime on the CPU reference input."""
    import onnxruntime as ort

    from edge_agent.contract.preprocess import preprocess_frame

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": preprocess_frame(rgb)[None]})[0][0].astype(
        np.float64
    )
    e = np.exp(logits - logits.max())
    return e / e.sum()
