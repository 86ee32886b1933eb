"""sources -> decode -> preprocess -> dynamic batch -> infer -> results -> outbox.

Two threads so that decoding overlaps inference (ONNX Runtime and TensorRT release the GIL):
the *prepare* thread takes frames from the sources' queues, decodes them and (unless the backend
preprocesses on the GPU) runs the CPU reference preprocessing; the *infer* loop batches, runs the
model, and writes the results of a batch to the outbox in ONE transaction, THEN acknowledges the
frames (ledger done, MQTT PUBACK). A crash anywhere before the outbox commit replays the frames;
after it, the outbox replays the messages: at-least-once end to end.
A bad input is quarantined with an ``errors`` message and the pipeline goes on, whatever its
decoding raised. The pipeline owns its threads: :meth:`Pipeline.start`, :meth:`Pipeline.stop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge_agent import payloads
from edge_agent.backends.base import Backend, BackendError
from edge_agent.batcher import Batcher
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.contract.decode import DecodeError, decode_bytes
from edge_agent.contract.decode_config import ALL_FORMATS, DecodeConfig, DecodeSpec
from edge_agent.contract.errors import PreprocessError
from edge_agent.contract.preprocess import PreprocessSpec, check_frame, preprocess_frame
from edge_agent.fields.stage import run_field, share_done
from edge_agent.outbox import Outbox, PendingMessage
from edge_agent.outbox_writer import OutboxWriter
from edge_agent.quarantine import Quarantine, QuarantineError
from edge_agent.results import classify
from edge_agent.sources.base import Frame, FrameHub
from edge_agent.sources.file_input import NotRegularFileError, read_regular_file
from edge_agent.stats import Stats
from edge_agent.thumbnails import thumbnail_jpeg

log = logging.getLogger(__name__)
PreprocessDevice = Literal["cpu", "cuda"]
# Rejection reasons of the pipeline itself (the decoder's are in edge_agent.contract.decode).
POISON = "poison"  # the agent died while processing this input, poison_after_attempts times
DECODE_FAILED = "decode_failed"  # decoding raised something unforeseen (a decoder bug)


@dataclass
class Prepared:
    """A decoded frame waiting for a batch, with what its stages cost so far (seconds)."""

    frame: Frame
    image: np.ndarray
    tensor: np.ndarray | None
    spec: PreprocessSpec | None
    decode_s: float
    preprocess_s: float
    ready_mono: float = field(default_factory=time.perf_counter)
    cutout: dict[str, Any] | None = None  # a wide field's galaxy: its place (payload "cutout")
    decoded_with: DecodeSpec | None = None  # the spec its bytes were decoded with (None: no bytes)


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


class Pipeline:
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

    # --- prepare ---------------------------------------------------------------------------

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

    def prepare(self, frame: Frame) -> Prepared | list[Prepared] | None:
        """Decode and preprocess one frame; a bad one is rejected here (``None``).

        Whatever decoding or preprocessing raises rejects this frame only: the pipeline goes on.
        An input the agent already died in ``poison_after_attempts`` times while decoding it is
        quarantined unread; any other is read between ``frame.decoding()`` and
        ``frame.decoded()`` (the dir source's ledger counts decodes that never ended).
        """
        if frame.interrupted >= self.pcfg.poison_after_attempts:
            self.reject(
                frame,
                POISON,
                f"the agent stopped {frame.interrupted} times while processing this input; "
                "quarantined unread (pipeline.poison_after_attempts)",
            )
            return None
        frame.decoding()
        try:
            return self._decode(frame)
        finally:
            frame.decoded()

    def _decode(self, frame: Frame) -> Prepared | list[Prepared] | None:
        if frame.source in self.field_sources:
            return self._prepare_field(frame)
        t0 = time.perf_counter()
        dcfg = self.decode  # once: a reload may swap it meanwhile (then run_batch decodes again)
        formats = frame.formats or ALL_FORMATS
        try:
            data = frame.data
            if frame.image is None and frame.path is not None:
                try:
                    data = read_regular_file(frame.path, dcfg.max_bytes)
                except OSError as exc:  # vanished or unreadable: nothing to quarantine
                    log.warning(
                        "%s: %s: cannot read (%s); skipped", frame.source, frame.frame_ref, exc
                    )
                    self.stats.error()
                    frame.done()
                    return None
            if frame.image is not None:
                image = frame.image
            elif data is not None:
                image = decode_bytes(data, dcfg, formats)
            else:
                raise DecodeError("corrupt", "frame without data")
            check_frame(image)
            t1 = time.perf_counter()
            spec = self.spec
            tensor = None if self.gpu_pre else preprocess_frame(image, spec)
            t2 = time.perf_counter()
        except NotRegularFileError as exc:
            self.reject(frame, exc.reason, str(exc), movable=not exc.is_directory)
            return None
        except DecodeError as exc:
            self.reject(frame, exc.reason, str(exc))
            return None
        except PreprocessError as exc:
            self.reject(frame, "corrupt", str(exc))
            return None
        except Exception as exc:  # no input may stop the pipeline
            self._log_unexpected(frame, exc)
            self.reject(frame, DECODE_FAILED, f"{type(exc).__name__}: {exc}")
            return None
        return Prepared(
            frame,
            image,
            tensor,
            None if self.gpu_pre else spec,
            t1 - t0,
            t2 - t1,
            decoded_with=None if frame.image is not None else dcfg.spec,
        )

    def _prepare_field(self, frame: Frame) -> list[Prepared] | None:
        """A wide field (``sources[].mode: fields``): its ``frame_summary`` and problems go to
        the outbox now, each galaxy's cut-out to the batches; the frame is done when the last
        cut-out's result is stored (:func:`edge_agent.fields.stage.share_done`)."""
        t0 = time.perf_counter()
        try:
            data = frame.path if frame.path is not None else frame.data
            if data is None:
                raise DecodeError("unsupported", "a wide field is a FITS file, not a camera image")
            run = run_field(
                data,
                decode=self.decode,
                fields=self.config.fields,
                input_size=self.spec.input_size,
                device_id=self.device_id,
                source_name=frame.source,
                frame_ref=frame.frame_ref,
                received=frame.received,
            )
        except NotRegularFileError as exc:
            self.reject(frame, exc.reason, str(exc), movable=not exc.is_directory)
            return None
        except DecodeError as exc:
            self.reject(frame, exc.reason, str(exc))
            return None
        except OSError as exc:  # vanished or unreadable: nothing to quarantine
            log.warning("%s: %s: cannot read (%s); skipped", frame.source, frame.frame_ref, exc)
            self.stats.error()
            frame.done()
            return None
        except Exception as exc:  # no input may stop the pipeline
            self._log_unexpected(frame, exc)
            self.reject(frame, DECODE_FAILED, f"{type(exc).__name__}: {exc}")
            return None
        messages = [
            PendingMessage(topic, payloads.to_bytes(body), self.qos, body["id"])
            for topic, body in [(self.topic_summaries, run.summary)]
            + [(self.topic_errors, e) for e in run.errors]
        ]
        if not self.outbox_writer.put_many(messages, self._stop_prepare):
            return None  # stopped while the disk was full: not done, so retried at the next start
        self.on_stored()
        if not run.cutouts:
            frame.done()
            return None
        read_s = time.perf_counter() - t0
        return [
            Prepared(f, c.image, None, None, read_s, 0.0, cutout=c.position())
            for f, c in zip(share_done(frame, len(run.cutouts)), run.cutouts, strict=True)
        ]

    def _log_unexpected(self, frame: Frame, exc: Exception) -> None:
        """The traceback once per kind of failure (type and raising line), one line after that."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
        key = (type(exc).__qualname__, *where)
        if key in self._unexpected_seen:
            log.error(
                "%s: %s: unexpected %s while decoding (traceback logged before): %s",
                frame.source,
                frame.frame_ref,
                type(exc).__name__,
                exc,
            )
            return
        if len(self._unexpected_seen) < 256:  # bounded: a hostile stream cannot grow it for ever
            self._unexpected_seen.add(key)
        log.error(
            "%s: %s: unexpected %s while decoding; the frame is rejected and the pipeline goes on",
            frame.source,
            frame.frame_ref,
            type(exc).__name__,
            exc_info=exc,
        )

    def reject(self, frame: Frame, reason: str, detail: str, *, movable: bool = True) -> None:
        """Quarantine a bad input, publish an ``errors`` message, then let the source forget it.

        An input that cannot be quarantined (the quarantine's file system is full, or it is a
        folder, which is never moved) stays where it was: the ``errors`` message and the log
        say so, and the source marks it so that it is not retried until it changes
        (:meth:`Frame.left_in_place`).
        """
        self.stats.error()
        where: str | None = None
        left: str | None = None
        try:
            if frame.path is not None and not movable:
                left = "a folder is never moved into the quarantine"
            elif frame.path is not None:
                where = str(
                    self.quarantine.put_file(
                        frame.path, source=frame.source, reason=reason, message=detail
                    )
                )
            elif frame.data is not None:
                name = frame.metadata.get("name") or frame.frame_ref.rsplit("/", 1)[-1]
                where = str(
                    self.quarantine.put_bytes(
                        frame.data,
                        name=name,
                        source=frame.source,
                        reason=reason,
                        message=detail,
                        extra={"frame_ref": frame.frame_ref, "metadata": frame.metadata},
                    )
                )
        except QuarantineError as exc:
            log.error("%s", exc)
            left = f"not quarantined: {exc.cause}"
        if left is not None:
            if frame.path is not None:
                detail = f"{detail}; left in place ({left}); change or re-copy it to retry"
            else:
                detail = f"{detail}; {left}"
        log.warning(
            "%s: %s rejected (%s): %s%s",
            frame.source,
            frame.frame_ref,
            reason,
            detail,
            "" if where is None else f" -> {where}",
        )
        body = payloads.error_payload(
            device_id=self.device_id,
            source=frame.source,
            frame_ref=frame.frame_ref,
            reason=reason,
            detail=detail,
            quarantined_to=where,
            at=time.time(),
        )
        message = PendingMessage(self.topic_errors, payloads.to_bytes(body), self.qos, body["id"])
        if not self.outbox_writer.put_many([message], self._stop_prepare):
            return  # stopped while the disk was full: not done, so retried at the next start
        self.on_stored()
        if left is None:
            frame.done()
        else:
            frame.left_in_place()  # a file: marked, not retried; MQTT bytes: un-acked, redelivered

    def report_source_problem(self, source: str, ref: str, reason: str, detail: str) -> None:
        """A source lost its server or device: an ``errors`` message (nothing to quarantine).

        Called from the source's thread; the outbox serialises writers. ``ref`` is the source's
        URI, so consumers see which camera it is.
        """
        body = payloads.error_payload(
            device_id=self.device_id,
            source=source,
            frame_ref=ref,
            reason=reason,
            detail=detail,
            quarantined_to=None,
            at=time.time(),
        )
        try:
            self.outbox.put(self.topic_errors, payloads.to_bytes(body), self.qos, msg_id=body["id"])
        except Exception:  # a full disk must not take the camera's thread down with it
            log.exception("%s: cannot store the errors message for %s", source, reason)
            return
        self.on_stored()

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

    def _redecode_stale(self, batch: list[Prepared]) -> list[Prepared]:
        """Frames decoded before a reload changed the bundle's decoding spec, decoded again
        with the new one (a 16-bit or FITS frame stretched otherwise is another image); one that
        can no longer be read or decoded is rejected like any bad input."""
        spec = self.decode.spec
        kept: list[Prepared] = []
        for p in batch:
            if p.decoded_with is None or p.decoded_with == spec:
                kept.append(p)
                continue
            f = p.frame
            try:
                data = f.data
                if data is None and f.path is not None:
                    data = read_regular_file(f.path, self.decode.max_bytes)
                if data is None:
                    raise DecodeError("corrupt", "frame without data")
                p.image = decode_bytes(data, self.decode, f.formats or ALL_FORMATS)
            except NotRegularFileError as exc:
                self.reject(f, exc.reason, str(exc), movable=not exc.is_directory)
                continue
            except DecodeError as exc:
                self.reject(f, exc.reason, str(exc))
                continue
            except OSError as exc:  # vanished since: nothing to quarantine
                log.warning("%s: %s: cannot read again (%s); skipped", f.source, f.frame_ref, exc)
                self.stats.error()
                f.done()
                continue
            p.decoded_with, p.tensor, p.spec = spec, None, None
            kept.append(p)
        return kept

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
