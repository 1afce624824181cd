"""Structured events, through structlog, and only once the application configured it.

A library should not print on its own: until ``structlog.configure`` (or
``structlog.testing.capture_logs``) has been called, no event is even built,
which also keeps the hot path free of logging cost.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["emit"]

# structlog's lazy logger proxy builds a new bound logger on every call; one is
# built per configuration instead, and built again whenever the configuration
# (processors included, which capture_logs swaps in place) changes.
_bound: tuple[tuple[object, ...], Any] | None = None


def emit(level: str, event: str, /, **fields: Any) -> None:
    """Log ``event`` at ``level`` with ``fields`` if the application set up structlog."""
    global _bound
    if not structlog.is_configured():
        return
    config = structlog.get_config()
    signature = (
        config["wrapper_class"],
        config["logger_factory"],
        config["context_class"],
        *config["processors"],
    )
    if _bound is None or _bound[0] != signature:
        _bound = (signature, structlog.get_logger("harnpool").bind())
    getattr(_bound[1], level)(event, **fields)
