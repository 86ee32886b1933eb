"""A tool a test needs and this machine lacks: the test is skipped, except under CI.

CI runs ``scripts/test`` on a fresh machine, where ``scripts/setup`` installs every tool the
suite uses: a missing one there is a broken set-up, so the test fails instead of hiding it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under CI, fail with it."""
    if under_ci():
        pytest.fail(f"{reason}; CI must install it (scripts/setup)")
    pytest.skip(reason)
