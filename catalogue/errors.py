"""Typed exceptions of the catalogue; only ``catalogue.cli.main`` turns them into exit codes."""

from edge_agent.contract.errors import GalaxyEdgeError


class CatalogueError(GalaxyEdgeError):
    """Base class of the catalogue's own errors."""


class StoreError(CatalogueError):
    """The database cannot be opened, created or written."""


class QueryError(CatalogueError):
    """A query or export that cannot be run as asked (bad cone, time, format...)."""


class RejectedMessage(CatalogueError):
    """An incoming message that cannot be catalogued; ``reason`` is stored with it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
