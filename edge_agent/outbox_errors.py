"""The outbox's errors: one for an outbox that cannot be used, one for a full disk."""

from __future__ import annotations

from edge_agent.contract.errors import GalaxyEdgeError


class OutboxError(GalaxyEdgeError):
    """The outbox file cannot be opened, is locked by another process or is not an outbox."""


class OutboxFullError(OutboxError):
    """The outbox's file system is full: nothing was stored; try again later (back-pressure)."""
