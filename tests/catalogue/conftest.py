"""Fixtures of the catalogue's tests (helpers live in catalogue_testkit.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from catalogue_testkit import require_postgres

from catalogue.pg_temp import TemporaryPostgres
from catalogue.store import Store, open_store


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TemporaryPostgres]:
    """One real PostgreSQL for the session; each test gets its own database (``pg_url``)."""
    require_postgres()
    server = TemporaryPostgres()
    try:
        server.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"PostgreSQL did not start: {exc} {detail.decode(errors='replace')[-500:]}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: TemporaryPostgres) -> str:
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same tests over both databases."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cat.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()
