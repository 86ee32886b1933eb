"""The pipeline on its own: no input stops it, it preprocesses where the backend says, it stops."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_testkit import drop_file, galaxy_like
from pipeline_testkit import (
    DeclaresDevicePreprocessing,
    DeclaresNoDevicePreprocessing,
    FolderPipeline,
)

from edge_agent import pipeline_prepare as prepare_module
from edge_agent.backends.base import BackendError
from edge_agent.backends.factory import create_backend
from edge_agent.contract.manifest import load_bundle
from edge_agent.pipeline import resolve_preprocess_device


def png_bytes(seed: int) -> bytes:
    _ok, png = cv2.imencode(".png", galaxy_like(seed))
    return png.tobytes()


def test_cuda_preprocessing_needs_a_backend_that_declares_it(tiny_bundle: Path) -> None:
    backend = create_backend(tiny_bundle, load_bundle(tiny_bundle))
    assert not backend.preprocesses_on_device
    assert resolve_preprocess_device(backend, "auto") == "cpu"
    with pytest.raises(BackendError, match="preprocess_device"):
        resolve_preprocess_device(backend, "cuda")


def test_any_exception_while_decoding_rejects_that_frame_only(
    tmp_path: Path,
    tiny_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Like OpenCV's cv2.error on a header bomb: not a DecodeError, yet only the frame fails."""
    real = prepare_module.decode_bytes

    def decode(data: bytes, *args: object, **kwargs: object) -> np.ndarray:
        if data.startswith(b"BOMB"):
            raise cv2.error("OpenCV(5.0) imgcodecs: pixels <= CV_IO_MAX_IMAGE_PIXELS")
        if data.startswith(b"ZERO"):
            raise ZeroDivisionError("division by zero")
        return real(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare_module, "decode_bytes", decode)
    with (
        caplog.at_level(logging.ERROR, logger="edge_agent.pipeline"),
        FolderPipeline(tmp_path, tiny_bundle) as rig,
    ):
        drop_file(rig.inbox, "good1.png", png_bytes(1))
        drop_file(rig.inbox, "bomb1.tif", b"BOMB one")
        drop_file(rig.inbox, "bomb2.tif", b"BOMB two")
        drop_file(rig.inbox, "zero.png", b"ZERO")
        drop_file(rig.inbox, "good2.png", png_bytes(2))
        rig.wait(classified=2, errors=3)
        assert rig.pipeline.alive()
        errors = rig.by_name("errors")
    assert set(rig.by_name("classifications")) == {"good1.png", "good2.png"}
    assert {n: e["reason"] for n, e in errors.items()} == {
        "bomb1.tif": "decode_failed",
        "bomb2.tif": "decode_failed",
        "zero.png": "decode_failed",
    }
    assert "pixels <= CV_IO_MAX_IMAGE_PIXELS" in errors["bomb1.tif"]["detail"]
    for error in errors.values():
        assert Path(error["quarantined_to"]).is_relative_to(rig.quarantine_dir)
    # One traceback per kind of failure, not one per frame.
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert sorted(type(r.exc_info[1]).__name__ for r in tracebacks) == [  # type: ignore[index]
        "ZeroDivisionError",
        "error",
    ]


@pytest.mark.parametrize(
    ("backend_class", "setting", "device"),
    [
        (DeclaresNoDevicePreprocessing, "auto", "cpu"),
        (DeclaresDevicePreprocessing, "auto", "cuda"),
        (DeclaresDevicePreprocessing, "cpu", "cpu"),
    ],
)
def test_the_pipeline_follows_the_backends_declaration(
    tmp_path: Path,
    tiny_bundle: Path,
    backend_class: type[DeclaresNoDevicePreprocessing],
    setting: str,
    device: str,
) -> None:
    backend = backend_class(create_backend(tiny_bundle, load_bundle(tiny_bundle)))
    with FolderPipeline(
        tmp_path, tiny_bundle, backend=backend, pipeline={"preprocess_device": setting}
    ) as rig:
        assert rig.pipeline.preprocess_device == device
        drop_file(rig.inbox, "a.png", png_bytes(3))
        rig.wait(classified=1, errors=0)
    if device == "cpu":  # CPU tensors (N x 3 x S x S float32) straight to infer()
        assert backend.frame_calls == 0
        assert len(backend.batches) == 1 and backend.batches[0].dtype == np.float32
    else:  # decoded frames to infer_frames(), which preprocesses them itself
        assert backend.frame_calls == 1


def test_stop_drains_then_joins_and_is_safe_twice(tmp_path: Path, tiny_bundle: Path) -> None:
    rig = FolderPipeline(tmp_path, tiny_bundle)
    for i in range(6):
        drop_file(rig.inbox, f"f{i}.png", png_bytes(i))
    rig.pipeline.start()
    rig.source.start()
    try:
        deadline = time.monotonic() + 20
        while len(rig.messages("classifications")) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        rig.source.pause()
        assert rig.pipeline.stop(time.monotonic() + 20.0)  # everything queued was classified
        assert not rig.pipeline.alive() and rig.pipeline.idle()
        assert rig.ledger.pending() == []
        assert len(rig.messages("classifications")) == 6
        assert rig.pipeline.stop(time.monotonic() + 1.0)
        with pytest.raises(RuntimeError, match="starts once"):
            rig.pipeline.start()
    finally:
        rig.source.stop()
        rig.outbox.close()
        rig.ledger.close()


def test_a_lone_frame_does_not_wait_for_a_batch_to_fill(tmp_path: Path, tiny_bundle: Path) -> None:
    """max_wait_ms is a minute, yet a frame with nothing behind it is classified at once."""
    with FolderPipeline(
        tmp_path, tiny_bundle, pipeline={"max_batch": 8, "max_wait_ms": 60_000}
    ) as rig:
        drop_file(rig.inbox, "lone.png", png_bytes(4))
        rig.wait(classified=1, errors=0, timeout=30.0)  # the old batcher took 60 s here
        (body,) = rig.messages("classifications")
    assert body["latency_ms"]["queue"] < 30_000


def test_frames_queued_behind_each_other_are_batched(tmp_path: Path, tiny_bundle: Path) -> None:
    """Under load the batch waits for the frames still queued or being decoded: one batch."""
    backend = DeclaresNoDevicePreprocessing(create_backend(tiny_bundle, load_bundle(tiny_bundle)))
    rig = FolderPipeline(
        tmp_path, tiny_bundle, backend=backend, pipeline={"max_batch": 8, "max_wait_ms": 60_000}
    )
    for i in range(6):
        drop_file(rig.inbox, f"f{i}.png", png_bytes(i))
    rig.source.start()
    try:
        deadline = time.monotonic() + 20
        while rig.hub.depth() < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rig.hub.depth() == 6  # all queued before the pipeline takes the first
        rig.pipeline.start()
        rig.wait(classified=6, errors=0, timeout=30.0)
    finally:
        rig.source.stop()
        rig.pipeline.stop(time.monotonic() + 5.0)
        rig.outbox.close()
        rig.ledger.close()
    assert [len(b) for b in backend.batches] == [6]
