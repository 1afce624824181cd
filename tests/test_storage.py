"""The seam: what the pool refuses before opening a storage that cannot do what it is asked."""

from __future__ import annotations

from typing import Any

import pytest

from harnpool._memory import MemoryStorage
from harnpool._pool import serve
from harnpool._settings import _Settings


class PriorityOnly(MemoryStorage):
    """A storage that, like one shared through a database, orders by priority and blocks."""

    strategies = frozenset({"priority"})
    on_full = frozenset({"block"})


class TestCapabilities:
    @pytest.mark.parametrize(
        ("setting", "value"), [("strategy", "fair"), ("on_full", "drop_oldest")]
    )
    async def test_an_unsupported_setting_is_refused_before_opening(
        self, setting: str, value: str
    ) -> None:
        storage = PriorityOnly("shared")
        settings: dict[str, Any] = {setting: value}
        with pytest.raises(ValueError, match=f"{setting}={value!r} is not supported") as info:
            async with serve(storage, _Settings(max_concurrent=1, **settings)):
                pass  # pragma: no cover - never opened
        assert "'shared'" in str(info.value)
        async with serve(storage, _Settings(max_concurrent=1)) as pool:
            assert pool.recovery.created  # the refused attempt never opened it
