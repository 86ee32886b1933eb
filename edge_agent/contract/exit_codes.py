"""Exit codes: the same number means the same thing in every command of the project.

``galaxy-train``, ``build-engine``, ``build-engine-compare`` and ``edge-agent`` (every
subcommand) return these from ``main`` and list them in their ``--help`` (:data:`EPILOG`).
Scripts and systemd units may rely on them: ``Restart=`` policies and the build unit tell a
usage mistake (do not retry) from a runtime failure (retry may help) and a stale bundle (rebuild).
"""

from __future__ import annotations

OK = 0
"""Success."""

FAILURE = 1
"""Runtime failure: a step failed on valid options (unreadable or corrupt file, export, I/O,
broker, a comparison outside its tolerance)."""

USAGE = 2
"""Usage or configuration error: bad options, an invalid config file, a missing input path, an
input too small to decide on. argparse's own errors use 2 as well."""

GATE_REFUSED = 3
"""The accuracy gate refused the requested precision."""

INVALID_BUNDLE = 4
"""The bundle is missing, corrupt, stale or built for another device, TensorRT or model."""

INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT), as shells report it."""

EPILOG = """\
exit codes (the same in every galaxy-edge command):
  0  success
  1  runtime failure (a step failed: corrupt input, export, I/O, broker)
  2  usage or configuration error (bad option or config, missing input, too few images)
  3  refused by the accuracy gate
  4  stale or invalid bundle (missing, corrupt, or built for another device or model)
  130  interrupted"""


def epilog(*notes: str) -> str:
    """:data:`EPILOG` after the command's own notes (each a paragraph)."""
    return "\n\n".join([*notes, EPILOG])
