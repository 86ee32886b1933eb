"""The shape every ``galaxy-train`` subcommand's parser shares (help, description, epilog)."""

from __future__ import annotations

import argparse


def add_subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """Add ``name`` to ``sub``; the description and epilog keep their own line breaks."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
