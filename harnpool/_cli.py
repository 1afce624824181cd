"""The command-line tool: ``python -m harnpool`` or ``harnpool``."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    print("harnpool: no commands yet", file=sys.stderr)
    return 2
