"""harnpool's caches of facts about callables never keep a user's callable alive."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import anyio

import harnpool


class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name

    async def greet(self) -> str:
        return f"hello {self.name}"


class TestNothingKeptAlive:
    async def test_a_bound_method_and_a_closure_are_collectable_after_close(
        self, journal_path: Path
    ) -> None:
        greeter = Greeter("x")

        def make_closure() -> Any:
            secret = [1, 2, 3]

            async def closure() -> int:
                return sum(secret)

            return closure

        closure = make_closure()
        refs = [weakref.ref(greeter), weakref.ref(closure)]
        with anyio.fail_after(10):
            async with harnpool.open_pool(journal_path) as pool:
                assert await pool.wait(await pool.submit(greeter.greet)) == "hello x"
                assert await pool.wait(await pool.submit(closure)) == 6
        del pool, greeter, closure
        gc.collect()
        assert [ref() for ref in refs] == [None, None]
