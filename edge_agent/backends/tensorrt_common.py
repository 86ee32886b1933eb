"""What the TensorRT builder (build_engine) and the TensorRT backend share: the real-TensorRT
check and the logger. Imported only where TensorRT is wanted; importing it without TensorRT
raises ImportError, which callers turn into their own one-line message.
"""

from __future__ import annotations

import logging

import tensorrt as trt

if getattr(trt, "Builder", None) is None:
    # tensorrt-stubs alone installs an importable, empty ``tensorrt`` namespace package.
    raise ImportError("tensorrt here is only its type stubs; TensorRT itself is not installed")

log = logging.getLogger("tensorrt")


class TensorRTLogger(trt.ILogger):
    """Forwards TensorRT's messages to logging and keeps the errors for the exception text."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
            self.errors.append(msg)
            log.error("TensorRT: %s", msg)
        elif severity == trt.ILogger.WARNING:
            log.warning("TensorRT: %s", msg)
        else:
            log.debug("TensorRT: %s", msg)
