"""Throw-away certificate authorities and certificates (openssl) for the MQTT TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def require_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")


def make_ca(folder: Path, name: str = "ca", cn: str = "galaxy-edge test CA") -> Path:
    """``<name>.pem`` and ``<name>.key`` in ``folder``; returns the certificate's path."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={cn}", cwd=folder)  # fmt: skip
    return folder / f"{name}.pem"


def issue(folder: Path, name: str, cn: str, san: str | None, ca: str = "ca") -> Path:
    """``<name>.pem`` / ``<name>.key`` signed by ``<ca>.pem``; ``san`` for a server."""
    _openssl(
        "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=folder,
    )  # fmt: skip
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem"
