"""From a frame to what the batches take: read, decode, preprocess; a wide field's cut-outs.

The *prepare* thread's work (:class:`~edge_agent.pipeline.Pipeline` runs it), and the infer
loop's second decode of frames that a reload left decoded the old way. Whatever decoding
raises rejects that frame only (:mod:`edge_agent.pipeline_rejects`): no input stops the
pipeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent import payloads
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.contract.decode import DecodeError, decode_bytes
from edge_agent.contract.decode_config import ALL_FORMATS, DecodeConfig, DecodeSpec
from edge_agent.contract.errors import PreprocessError
from edge_agent.contract.preprocess import PreprocessSpec, check_frame, preprocess_frame
from edge_agent.fields.stage import run_field, share_done
from edge_agent.outbox import PendingMessage
from edge_agent.pipeline_rejects import DECODE_FAILED, POISON, Rejections
from edge_agent.sources.base import Frame
from edge_agent.sources.file_input import NotRegularFileError, read_regular_file
from edge_agent.stats import Stats

# The pipeline's messages keep the logger name they always had.
log = logging.getLogger("edge_agent.pipeline")


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


class FramePreparation(Rejections):
    """The :class:`~edge_agent.pipeline.Pipeline`'s decoding and preprocessing of frames.

    A mixin: these methods share the pipeline's state (declared below), which a reload
    replaces (:meth:`~edge_agent.pipeline.Pipeline.swap`).
    """

    config: AgentConfig
    pcfg: PipelineConfig
    stats: Stats
    decode: DecodeConfig
    spec: PreprocessSpec
    gpu_pre: bool
    field_sources: set[str]
    topic_summaries: str
    _unexpected_seen: set[tuple[str, str, int]]

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
        except (NotRegularFileError, DecodeError) as exc:
            self._reject_unreadable(frame, exc)
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
        except (NotRegularFileError, DecodeError) as exc:
            self._reject_unreadable(frame, exc)
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

    def _reject_unreadable(self, frame: Frame, exc: NotRegularFileError | DecodeError) -> None:
        """Not a regular file (a folder stays where it is), or bytes that do not decode."""
        if isinstance(exc, NotRegularFileError):
            self.reject(frame, exc.reason, str(exc), movable=not exc.is_directory)
        else:
            self.reject(frame, exc.reason, str(exc))

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
            except (NotRegularFileError, DecodeError) as exc:
                self._reject_unreadable(f, exc)
                continue
            except OSError as exc:  # vanished since: nothing to quarantine
                log.warning("%s: %s: cannot read again (%s); skipped", f.source, f.frame_ref, exc)
                self.stats.error()
                f.done()
                continue
            p.decoded_with, p.tensor, p.spec = spec, None, None
            kept.append(p)
        return kept
