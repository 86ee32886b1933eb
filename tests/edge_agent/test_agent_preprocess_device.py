"""The agent reports where frames are really preprocessed, from the backend's declaration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import RunningAgent, agent_config, write_config
from mqtt_broker import Collector, MosquittoBroker
from pipeline_testkit import DeclaresDevicePreprocessing, DeclaresNoDevicePreprocessing

from edge_agent import agent as agent_module
from edge_agent.backends.base import Backend

pytestmark = pytest.mark.mqtt


@pytest.mark.parametrize(
    ("backend_class", "device"),
    [(DeclaresNoDevicePreprocessing, "cpu"), (DeclaresDevicePreprocessing, "cuda")],
)
def test_status_names_the_declared_preprocess_device(
    tmp_path: Path,
    tiny_bundle: Path,
    mosquitto: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
    backend_class: type[DeclaresNoDevicePreprocessing],
    device: str,
) -> None:
    """A backend that overrides infer_frames without kernels (a TensorRT bundle built without
    them) used to be reported, and fed, as ``cuda``; now the declaration decides."""
    real = agent_module.create_backend

    def wrapped(*args: Any, **kwargs: Any) -> Backend:
        return backend_class(real(*args, **kwargs))

    monkeypatch.setattr(agent_module, "create_backend", wrapped)
    cfg = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, tiny_bundle, mosquitto))
    collector = Collector(mosquitto)
    try:
        with RunningAgent(cfg) as agent:
            assert agent.pipeline.preprocess_device == device
            assert collector.wait_for(lambda _: collector.on("galaxy-edge/dev1/status"), 10)
            status = json.loads(collector.on("galaxy-edge/dev1/status")[-1].payload)
    finally:
        collector.close()
    assert status["model"]["preprocess_device"] == device
