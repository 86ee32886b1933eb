"""A throw-away PostgreSQL cluster on a unix socket: for tests, benchmarks and trying it out.

``initdb`` + ``pg_ctl`` from Debian's ``postgresql`` package into a temporary folder, listening
on a unix socket only (no TCP port). PostgreSQL refuses to run as root: as root the cluster is
owned by and runs as the ``postgres`` system user (``runuser``), else ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_pg_bin() -> Path | None:
    for d in PG_BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class TemporaryPostgres:
    """A throw-away PostgreSQL cluster listening on a unix socket only (no TCP port)."""

    def __init__(self) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed (apt-get install -y postgresql postgresql-15-q3c)"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="catalogue-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def _as_owner(self, *cmd: str) -> list[str]:
        if self.user is None:
            return list(cmd)
        return ["runuser", "-u", self.user, "--", *cmd]

    def start(self) -> TemporaryPostgres:
        subprocess.run(
            self._as_owner(
                str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                "postgres", "-E", "UTF8", "--no-sync",
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-k {self.socket_dir} -c listen_addresses='' -F -c max_connections=50"
        subprocess.run(
            self._as_owner(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                "-l", str(self.root / "log"), "-w", "-t", "60", "start",
            ),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    def create_database(self) -> str:
        import psycopg

        name = f"cat_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "stop"),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
