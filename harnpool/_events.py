"""Structured events, through structlog, and only once the application configured it.

A library should not print on its own: until ``structlog.configure`` (or
``structlog.testing.capture_logs``) has been called, no event is even built,
which also keeps the hot path free of logging cost.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["emit"]

_logger = structlog.get_logger("harnpool")


def emit(level: str, event: str, /, **fields: Any) -> None:
    """Log ``event`` at ``level`` with ``fields`` if the application set up structlog."""
    if structlog.is_configured():
        getattr(_logger, level)(event, **fields)
