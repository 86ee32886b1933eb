"""A wide-field frame from a source to cut-outs and messages: what the agent and ``classify`` share.

:func:`run_field` reads the frame (a file, refused unless regular and within
``fields.max_file_bytes``, or the bytes an MQTT or INDI source received), finds and frames its
galaxies (:func:`edge_agent.fields.process.process_field`), and builds the ``frame_summary``
and the ``errors`` payloads of its problems. A frame that cannot be read at all raises
:class:`~edge_agent.contract.decode.DecodeError`: the caller quarantines it like any bad input.

:func:`share_done` gives each cut-out a frame of its own whose ``done()`` counts down: the
source hears that the frame is done only once every cut-out's result is in the outbox.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import payloads
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.fields.process import Cutout, FieldOutcome, process_field
from edge_agent.fields.raw import RawFrame, read_fits, read_fits_bands
from edge_agent.fields.settings import FieldsConfig
from edge_agent.sources.base import Frame
from edge_agent.sources.file_input import read_regular_file


@dataclass
class FieldRun:
    """One wide field, processed: its cut-outs and the payloads that describe it."""

    outcome: FieldOutcome
    summary: dict[str, Any]  # the frame_summary payload
    errors: list[dict[str, Any]]  # one errors payload per problem
    read_s: float
    process_s: float

    @property
    def cutouts(self) -> list[Cutout]:
        return self.outcome.cutouts


def read_field(
    source: Path | bytes | Sequence[Path], decode: DecodeConfig, fields: FieldsConfig
) -> RawFrame:
    """A file, its bytes, or three band files (g, r, z) of one exposure, as a raw frame.

    Files are read through :func:`read_regular_file` (links, FIFOs and devices refused, at most
    ``fields.max_file_bytes``); pixels are bounded by ``decode.max_pixels`` before decoding.
    """
    if isinstance(source, bytes):
        return read_fits(source, decode, fields.band_order)
    if isinstance(source, Path):
        data = read_regular_file(source, fields.max_file_bytes)
        return read_fits(data, decode, fields.band_order, name=source.name)
    paths = [Path(p) for p in source]
    blobs: list[Path | bytes] = [read_regular_file(p, fields.max_file_bytes) for p in paths]
    return read_fits_bands(blobs, decode, names=[p.name for p in paths])


def run_field(
    source: Path | bytes | Sequence[Path],
    *,
    decode: DecodeConfig,
    fields: FieldsConfig,
    input_size: int,
    device_id: str,
    source_name: str,
    frame_ref: str,
    received: float,
) -> FieldRun:
    """Read and process one wide field; raises DecodeError (and OSError) when unreadable."""
    t0 = time.perf_counter()
    raw = read_field(source, decode, fields)
    t1 = time.perf_counter()
    outcome = process_field(raw, fields, input_size)
    t2 = time.perf_counter()
    del raw  # the frame's pixels go now; the cut-outs hold what the model needs
    outcome.summary["timings_ms"]["read"] = (t1 - t0) * 1e3
    now = time.time()
    summary = payloads.frame_summary_payload(
        device_id=device_id,
        source=source_name,
        frame_ref=frame_ref,
        received_at=received,
        at=now,
        summary=outcome.summary,
        problems=outcome.problems,
    )
    errors = [
        payloads.error_payload(
            device_id=device_id,
            source=source_name,
            frame_ref=frame_ref,
            reason=reason,
            detail=detail,
            quarantined_to=None,
            at=now,
        )
        for reason, detail in outcome.problems
    ]
    return FieldRun(outcome, summary, errors, t1 - t0, t2 - t1)


def share_done(frame: Frame, count: int) -> list[Frame]:
    """``count`` frames standing for ``frame``'s cut-outs; the last ``done()`` calls its own."""
    left = [count]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            frame.done()

    return [
        dataclasses.replace(
            frame,
            data=None,
            image=None,
            on_done=one_done,
            on_decoding=None,
            on_decoded=None,
            on_left=None,
        )
        for _ in range(count)
    ]
