"""Small JPEGs of what was classified, for consumers without access to the device's disk.

Published on ``<prefix>/<device_id>/thumbnails/<classification id>`` (the raw JPEG bytes, as
Frigate publishes snapshots), through the outbox in the same transaction as the classification:
at-least-once like the result it shows, so a catalogue that has the row gets the picture too.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.contract.errors import GalaxyEdgeError


class ThumbnailError(GalaxyEdgeError):
    """A frame that cannot be made into a thumbnail."""


def thumbnail_jpeg(image: np.ndarray, size: int, quality: int) -> bytes:
    """An RGB uint8 frame scaled so its longer side is at most ``size`` px, as JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ThumbnailError(f"thumbnail needs an H x W x 3 uint8 frame, got {image.shape}")
    h, w = image.shape[:2]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        dims = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, dims, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ThumbnailError("OpenCV could not encode the thumbnail")
    return buf.tobytes()
