"""A pipeline without a broker: a watched folder, its ledger, the tiny bundle, a real outbox.

What the pipeline stored is read back from the outbox's SQLite file, so tests see the exact
``classifications`` and ``errors`` payloads that would go to the broker.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from agent_testkit import agent_config

from edge_agent.backends.base import Backend, BatchResult
from edge_agent.backends.factory import create_backend
from edge_agent.config import AgentConfig
from edge_agent.contract.manifest import load_bundle
from edge_agent.contract.preprocess import ChannelOrder
from edge_agent.ledger import Ledger
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline
from edge_agent.quarantine import Quarantine
from edge_agent.sources.base import FrameHub
from edge_agent.sources.directory import DirectorySource
from edge_agent.stats import Stats


def stored_messages(outbox_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(topic, payload)`` of every message in an outbox file, oldest first."""
    db = sqlite3.connect(f"file:{outbox_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT topic, payload FROM messages ORDER BY seq").fetchall()
    finally:
        db.close()
    return [(str(t), json.loads(p)) for t, p in rows]


class FolderPipeline:
    """``with FolderPipeline(tmp_path, bundle) as rig:`` drop files into ``rig.inbox``."""

    def __init__(
        self,
        tmp: Path,
        bundle: Path,
        backend: Backend | None = None,
        formats: tuple[str, ...] = ("png",),
        **overrides: Any,
    ) -> None:
        self.config = AgentConfig.model_validate(agent_config(tmp, bundle, None, **overrides))
        self.inbox = tmp / "inbox"
        self.quarantine_dir = self.config.quarantine_dir
        self.outbox_path = self.config.mqtt.outbox.path
        self.backend = backend or create_backend(bundle, load_bundle(bundle))
        self.hub = FrameHub()
        self.ledger = Ledger(self.config.state_dir / "ledger.sqlite3")
        self.outbox = Outbox(self.outbox_path, 10**9, 10**9)
        self.stats = Stats()
        self.pipeline = Pipeline(
            self.config,
            self.hub,
            self.backend,
            self.outbox,
            Quarantine(self.quarantine_dir),
            self.stats,
        )
        self.source = DirectorySource(
            "inbox", self.hub.queue("inbox", 64, "block"), formats, self.inbox, self.ledger
        )

    def __enter__(self) -> FolderPipeline:
        self.pipeline.start()
        self.source.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.stop(timeout=2.0)
        self.pipeline.stop(time.monotonic() + 5.0)
        self.outbox.close()
        self.ledger.close()
        self.backend.close()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [p for t, p in stored_messages(self.outbox_path) if t.endswith("/" + kind)]

    def by_name(self, kind: str) -> dict[str, dict[str, Any]]:
        """Payloads keyed by the file name of their ``frame_ref``."""
        return {Path(m["frame_ref"].rsplit("@", 1)[0]).name: m for m in self.messages(kind)}

    def wait(self, classified: int, errors: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                len(self.messages("classifications")) >= classified
                and len(self.messages("errors")) >= errors
            ):
                return
            assert self.pipeline.alive(), f"pipeline died: {self.pipeline.failure}"
            time.sleep(0.05)
        raise AssertionError(
            f"waited for {classified} classifications and {errors} errors; have "
            f"{sorted(self.by_name('classifications'))} and {sorted(self.by_name('errors'))}"
        )


class DeclaresNoDevicePreprocessing(Backend):
    """Overrides infer_frames (like the TensorRT backend) but has no kernels for this bundle."""

    name = "declared-cpu"

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.bundle_dir, inner.manifest)
        self.inner = inner
        self.batches: list[np.ndarray] = []
        self.frame_calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        return self.inner.infer(batch)

    def infer_frames(
        self, frames: Sequence[np.ndarray], frame_order: ChannelOrder = "RGB"
    ) -> BatchResult:
        self.frame_calls += 1
        return super().infer_frames(frames, frame_order)


class DeclaresDevicePreprocessing(DeclaresNoDevicePreprocessing):
    name = "declared-device"

    @property
    def preprocesses_on_device(self) -> bool:
        return True
