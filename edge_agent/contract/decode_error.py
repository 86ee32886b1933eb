"""The one exception the decoder raises, and its reason codes.

Its own module so that the pre-decode header checks (:mod:`edge_agent.contract.image_headers`,
:mod:`~edge_agent.contract.tiff_header`, :mod:`~edge_agent.contract.fits_header`) and the decoder
(:mod:`edge_agent.contract.decode`) share it without importing each other in a circle.
"""

from __future__ import annotations

from typing import Literal

from edge_agent.contract.errors import GalaxyEdgeError

Reason = Literal["corrupt", "truncated", "oversized", "wrong_type", "unsupported"]


class DecodeError(GalaxyEdgeError):
    """An input that cannot become a frame; ``reason`` is one of the codes of :data:`Reason`."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason: Reason = reason
        super().__init__(message)
