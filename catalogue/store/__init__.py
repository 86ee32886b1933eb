"""Catalogue databases: SQLite (default) and PostgreSQL; :func:`open_store` picks by URL."""

from __future__ import annotations

from pathlib import Path

from catalogue.errors import StoreError
from catalogue.store.base import Rejected, Store, WriteCounts
from catalogue.store.page import PageState
from catalogue.store.query import Cone, Query
from catalogue.store.schema import COLUMNS

__all__ = [
    "COLUMNS",
    "Cone",
    "PageState",
    "Query",
    "Rejected",
    "Store",
    "WriteCounts",
    "open_store",
]


def open_store(url: str) -> Store:
    """``sqlite:///path`` (or a plain path), ``postgresql://...`` / ``postgres://...``."""
    if url.startswith(("postgresql://", "postgres://")) or url.startswith("host="):
        try:
            from catalogue.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL needs psycopg ({exc.name}): pip install 'galaxy-edge[catalogue]'"
            ) from exc
        return PostgresStore(url)
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if "://" in path:
        raise StoreError(f"unknown database URL {url!r}; use sqlite:///PATH or postgresql://...")
    from catalogue.store.sqlite import SqliteStore

    return SqliteStore(Path(path))
