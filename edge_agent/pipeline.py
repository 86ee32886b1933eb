"""sources -> decode -> preprocess -> dynamic batch -> infer -> results -> outbox.

Two threads so that decoding overlaps inference (ONNX Runtime and TensorRT release the GIL):
the *prepare* thread takes frames from the sources' queues, decodes them and (unless the backend
preprocesses on the GPU) runs the CPU reference preprocessing; the *infer* loop batches, runs the
model, and writes the results of a batch to the outbox in ONE transaction, THEN acknowledges the
frames (ledger done, MQTT PUBACK). A crash anywhere before the outbox commit replays the frames;
after it, the outbox replays the messages: at-least-once end to end.
A bad input is quarantined with an ``errors`` message and the pipeline goes on, whatever its
decoding raised. The pipeline owns its threads: :meth:`Pipeline.start`, :meth:`Pipeline.stop`.

Here: the threads, reloads and batches; how a frame is decoded and preprocessed is
:mod:`edge_agent.pipeline_prepare`'s, how a bad one is rejected :mod:`edge_agent.pipeline_rejects`'.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

import numpy as np

from edge_agent import payloads
from edge_agent.backends.base import Backend, BackendError
from edge_agent.batcher import Batcher
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.preprocess import preprocess_frame
from edge_agent.outbox import Outbox, PendingMessage
from edge_agent.outbox_writer import OutboxWriter
from edge_agent.pipeline_prepare import FramePreparation, Prepared
from edge_agent.pipeline_rejects import DECODE_FAILED, POISON
from edge_agent.quarantine import Quarantine
from edge_agent.results import classify
from edge_agent.sources.base import FrameHub
from edge_agent.stats import Stats
from edge_agent.thumbnails import thumbnail_jpeg

__all__ = [
    "DECODE_FAILED",
    "POISON",
    "Pipeline",
    "Prepared",
    "PreprocessDevice",
    "resolve_preprocess_device",
]

log = logging.getLogger(__name__)
PreprocessDevice = Literal["cpu", "cuda"]


def resolve_preprocess_device(backend: Backend, setting: str) -> PreprocessDevice:
    """Where frames are preprocessed, from what the backend declares and the config asks.

    ``auto`` follows the backend's :attr:`~Backend.preprocesses_on_device`; ``cuda`` demands it
    (a TensorRT bundle built without kernels has none: an error, not a silent CPU fallback);
    ``cpu`` always uses the CPU reference.
    """
    on_device = backend.preprocesses_on_device
    if setting == "cuda" and not on_device:
        raise BackendError(
            f"pipeline.preprocess_device is cuda but the {backend.name} backend has no GPU "
            "preprocessing (an ONNX Runtime bundle, or a TensorRT bundle built without CUDA "
            "kernels); use a TensorRT bundle with kernels or set preprocess_device: auto"
        )
    return "cuda" if on_device and setting != "cpu" else "cpu"


class Pipeline(FramePreparation):
    """The prepare and infer threads, owned here: :meth:`start`, then :meth:`stop` once.

    ``heartbeat`` is called by the infer loop at least every ``heartbeat_every_s`` seconds, also
    when idle (the agent pings systemd's watchdog from it); ``on_stored`` after results or
    ``errors`` messages reached the outbox (it wakes the publisher).
    """

    def __init__(
        self,
        config: AgentConfig,
        hub: FrameHub,
        backend: Backend,
        outbox: Outbox,
        quarantine: Quarantine,
        stats: Stats,
        heartbeat: Callable[[], None] = lambda: None,
        on_stored: Callable[[], None] = lambda: None,
        heartbeat_every_s: float = 0.5,
    ) -> None:
        self.hub = hub
        self.outbox = outbox
        self.outbox_writer = OutboxWriter(outbox)  # waits while the disk is full (back-pressure)
        self.quarantine = quarantine
        self.stats = stats
        self.heartbeat = heartbeat
        self.on_stored = on_stored  # wakes the publisher's pump: results are in the outbox
        # A batch waits for more frames only while the sources have some queued or being
        # decoded: a lone frame is classified at once (docs/benchmarks.md, lone-frame latency).
        self.batcher: Batcher[Prepared] = Batcher(config.pipeline.ready_queue, more_coming=hub.busy)
        self._lock = threading.Lock()
        self._pending_swap: tuple[AgentConfig, Backend] | None = None
        self._apply(config, backend)
        self._stop_prepare = threading.Event()
        self._stop_infer = threading.Event()
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._heartbeat_every_s = heartbeat_every_s
        self._unexpected_seen: set[tuple[str, str, int]] = set()

    def _apply(self, config: AgentConfig, backend: Backend) -> None:
        self.config = config
        self.pcfg: PipelineConfig = config.pipeline
        self.backend = backend
        self._preprocess_device = resolve_preprocess_device(backend, self.pcfg.preprocess_device)
        self.gpu_pre = self._preprocess_device == "cuda"
        self.spec = backend.manifest.preprocess
        # The bundle's pixels within this host's limits (checked against the config at load).
        self.decode: DecodeConfig = config.decode.resolve(backend.manifest.decode)
        self.max_batch = max(1, min(self.pcfg.max_batch, backend.max_batch))
        manifest = backend.manifest
        self.model_name = manifest.model.name
        self.model_sha = manifest.files.get(manifest.model_file, manifest.source_onnx_sha256)
        self.precision = manifest.precision
        self.model_ref = payloads.ModelRef(self.model_name, self.model_sha, self.precision)
        # softmax(logits / T) when the bundle is calibrated (docs/mqtt.md, confidence)
        self.temperature = manifest.calibration.temperature if manifest.calibration else None
        self.device_id = config.device_id
        prefix, device = config.mqtt.topic_prefix, config.device_id
        self.topic_results = payloads.topic(prefix, device, "classifications")
        self.topic_errors = payloads.topic(prefix, device, "errors")
        self.qos = config.mqtt.qos
        self.thumbnails = config.mqtt.thumbnails
        self.field_sources = {s.display_name for s in config.sources if s.mode == "fields"}
        self.topic_summaries = payloads.topic(prefix, device, "summaries")

    def swap(self, config: AgentConfig, backend: Backend) -> Backend:
        """Use a new config and backend from the next batch on; returns the old backend.

        Queued frames are kept: prepared tensors made for another preprocessing spec are made
        again from their decoded image before they run.
        """
        with self._lock:
            old = self.backend
            self._pending_swap = (config, backend)
        return old

    def wait_swapped(self, timeout: float) -> bool:
        """True once the infer loop runs the config and backend of the last :meth:`swap`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending_swap is None:
                    return True
            if not self.alive():
                return False
            time.sleep(0.02)
        return False

    # --- threads ---------------------------------------------------------------------------

    @property
    def preprocess_device(self) -> PreprocessDevice:
        """Where frames are preprocessed now (``cuda``: by the backend, on the device)."""
        return self._preprocess_device

    @property
    def failure(self) -> BaseException | None:
        """What stopped a thread of the pipeline, if anything did."""
        return self._failure

    def start(self) -> None:
        """Start the prepare and infer threads (once)."""
        if self._started:
            raise RuntimeError("a pipeline starts once")
        self._started = True
        for target, name in ((self._prepare_loop, "prepare"), (self._infer_loop, "infer")):
            t = threading.Thread(target=self._guard(target), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the agent, which stops with an error
                log.exception("%s thread failed", threading.current_thread().name)
                self._failure = exc
                self._stop_prepare.set()
                self._stop_infer.set()

        return run

    def alive(self) -> bool:
        return self._failure is None and all(t.is_alive() for t in self._threads)

    def idle(self) -> bool:
        """Nothing queued, being decoded or waiting for a batch."""
        return not self.hub.busy() and len(self.batcher) == 0

    def depth(self) -> int:
        """Decoded frames waiting for a batch."""
        return len(self.batcher)

    def stop(self, deadline: float, *, drain: bool = True) -> bool:
        """Stop by ``deadline`` (``time.monotonic()``); True when nothing queued was left.

        With ``drain``, queued frames are classified for most of the time left (the sources
        should be paused first); then both threads stop and are joined until ``deadline``.
        Frames not classified stay un-done at their source (a file stays ``seen`` in the
        ledger, an MQTT frame un-acknowledged), so the next start classifies them.
        Safe to call on a pipeline that never started or already failed.
        """
        if drain:
            drain_until = time.monotonic() + 0.8 * max(0.0, deadline - time.monotonic())
            while self.alive() and not self.idle() and time.monotonic() < drain_until:
                time.sleep(0.05)
        drained = self.idle()
        self._stop_prepare.set()
        self.batcher.close()
        self._stop_infer.set()
        for t in self._threads:
            t.join(max(0.5, deadline - time.monotonic()))
        return drained

    def _prepare_loop(self) -> None:
        while not self._stop_prepare.is_set():
            frame = self.hub.get(timeout=0.2)
            if frame is None:
                continue
            try:
                self.stats.frame_in()
                prepared = self.prepare(frame)
                items = prepared if isinstance(prepared, list) else [prepared] if prepared else []
                for item in items:  # a wide field gives one per galaxy
                    while not self.batcher.put(item, timeout=0.5):
                        if self._stop_infer.is_set():
                            return
            finally:
                self.hub.release()
                self.batcher.poke()  # a batch waiting for this frame need not wait any more

    # --- infer -----------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        while not self._stop_infer.is_set():
            self.heartbeat()
            with self._lock:
                swap, self._pending_swap = self._pending_swap, None
            if swap is not None:
                self._apply(*swap)
                log.info("pipeline now runs %s (%s)", self.model_name, self.backend.name)
            batch = self.batcher.next_batch(
                self.max_batch, self.pcfg.max_wait_ms / 1000.0, self._heartbeat_every_s
            )
            if batch:
                self.run_batch(batch)

    def _thumbnail(self, image: np.ndarray, result_id: str) -> PendingMessage:
        prefix = self.config.mqtt.topic_prefix
        jpeg = thumbnail_jpeg(image, self.thumbnails.size, self.thumbnails.quality)
        thumb_topic = payloads.thumbnail_topic(prefix, self.device_id, result_id)
        return PendingMessage(thumb_topic, jpeg, self.qos, f"{result_id}/thumbnail")

    def run_batch(self, batch: list[Prepared]) -> None:
        batch = self._redecode_stale(batch)
        if not batch:
            return
        start = time.perf_counter()
        pre_s = 0.0
        if self.gpu_pre:
            result = self.backend.infer_frames([p.image for p in batch], "RGB")
            logits = result.logits
            pre_s = result.timings.get("preprocess", 0.0)
            infer_s = result.timings.get("infer", time.perf_counter() - start - pre_s)
        else:
            for p in batch:
                if p.spec != self.spec or p.tensor is None:  # made before a reload
                    p.tensor, p.spec = preprocess_frame(p.image, self.spec), self.spec
            tensors = np.stack([p.tensor for p in batch if p.tensor is not None])
            t0 = time.perf_counter()
            logits = self.backend.infer(tensors)
            infer_s = time.perf_counter() - t0
        results = classify(
            logits,
            uncertain_below=self.pcfg.uncertain_below,
            k=self.pcfg.top_k,
            temperature=self.temperature,
        )
        now_mono, now = time.perf_counter(), time.time()
        messages, latencies = [], []
        for p, res in zip(batch, results, strict=True):
            f = p.frame
            lat = {
                "decode": p.decode_s * 1e3,
                "queue": ((f.dequeued_mono - f.received_mono) + (start - p.ready_mono)) * 1e3,
                "preprocess": (pre_s if self.gpu_pre else p.preprocess_s) * 1e3,
                "infer": infer_s * 1e3,
                "total": (now_mono - f.received_mono) * 1e3,
            }
            lat = {k: max(0.0, v) for k, v in lat.items()}
            latencies.append(lat)
            body = payloads.classification_payload(
                device_id=self.device_id,
                source=f.source,
                frame_ref=f.frame_ref,
                received_at=f.received,
                classified_at=now,
                result=res,
                model=self.model_ref,
                latency_ms=lat,
                metadata=f.metadata,
                cutout=p.cutout,
            )
            messages.append(
                PendingMessage(self.topic_results, payloads.to_bytes(body), self.qos, body["id"])
            )
            if self.thumbnails.enabled:  # same transaction as its result: at-least-once too
                messages.append(self._thumbnail(p.image, body["id"]))
        if not self.outbox_writer.put_many(messages, self._stop_infer, self.heartbeat):
            return  # stopped while the disk was full: the frames are replayed at the next start
        # The results are durable: publish now, then acknowledge the frames (a folder's ledger
        # write cost a lone frame ~1-15 ms before its result left when done first). A crash in
        # between replays the frames; their results keep their ids, consumers deduplicate.
        self.on_stored()
        for p in batch:
            p.frame.done()
        self.stats.batch_done(latencies)
