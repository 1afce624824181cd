"""What test task functions share with their tests, under each test's ``token``.

Task functions are module-level (a reopened pool, or another process, finds them by
name), so they reach their test's events and counters through :data:`state`, under
keys that start with the test's token; the ``token`` fixture removes them afterwards.
"""

from __future__ import annotations

from typing import Any

state: dict[str, Any] = {}
