"""The command-line tool on a pool in PostgreSQL: inspect and verify read it; the rest refuse."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import harnpool
from harnpool._cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    main,
)

psycopg = pytest.importorskip("psycopg")

from harnpool._pg import SCHEMA_VERSION, PostgresStore  # noqa: E402
from tests.postgres_server import as_url  # noqa: E402

Run = Callable[..., tuple[int, str, str]]

#: What the filled pool holds: key -> status.
KEYS = {
    "invoice-1": "completed",
    "invoice-2": "completed",
    "invoice-3": "completed",
    "bad-1": "failed",
    "later": "queued",
}


async def square(n: int) -> int:
    return n * n


async def refuse() -> None:
    raise ValueError("no such customer")


async def _fill(url: str, name: str) -> list[harnpool.TaskInfo]:
    """Three completed tasks, a failed one and a queued one; return the pool's own view."""
    with anyio.fail_after(30):
        async with harnpool.open_pool(url, name=name) as pool:
            ids = [await pool.submit(square, n, key=f"invoice-{n}") for n in (1, 2, 3)]
            failing = await pool.submit(refuse, key="bad-1")
            for task_id in ids:
                await pool.wait(task_id)
            with pytest.raises(harnpool.TaskFailed):
                await pool.wait(failing)
        async with harnpool.open_pool(url, name=name, workers=0) as client:
            await client.submit(square, 99, key="later")
            return client.tasks()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str | os.PathLike[str]) -> tuple[int, str, str]:
        code = main([os.fspath(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def filled(postgres_url: str, pool_name: str) -> list[harnpool.TaskInfo]:
    tasks = anyio.run(_fill, postgres_url, pool_name)
    assert {t.key: t.status.value for t in tasks} == KEYS
    return tasks


def _execute(dsn: str, query: str, params: Any = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, params)


class TestInspect:
    def test_the_table_shows_every_task(
        self, run: Run, postgres_url: str, pool_name: str, filled: list[harnpool.TaskInfo]
    ) -> None:
        code, out, err = run("inspect", postgres_url, "--name", pool_name)
        assert (code, err) == (EXIT_OK, "")
        rows = out.splitlines()
        assert rows[0].split()[:4] == ["ID", "KEY", "PRIORITY", "STATUS"]
        assert {row.split()[1]: row.split()[3] for row in rows[1:6]} == KEYS
        assert [row.split()[0] for row in rows[1:6]] == [t.id for t in filled]
        assert "all tasks shown" in out

    def test_json_is_what_the_pool_reports(
        self, run: Run, postgres_url: str, pool_name: str, filled: list[harnpool.TaskInfo]
    ) -> None:
        code, out, _ = run("inspect", postgres_url, "--name", pool_name, "--json")
        assert code == EXIT_OK
        rows = json.loads(out)
        assert [(r["id"], r["key"], r["status"], r["attempts"]) for r in rows] == [
            (t.id, t.key, t.status.value, t.attempts) for t in filled
        ]
        results = {r["key"]: r["result"] for r in rows}
        assert [results[f"invoice-{n}"] for n in (1, 2, 3)] == [1, 4, 9]
        failed = next(r for r in rows if r["key"] == "bad-1")
        assert failed["error_type"] == "builtins.ValueError"

    def test_filters_by_status_and_key(
        self, run: Run, postgres_url: str, pool_name: str, filled: list[harnpool.TaskInfo]
    ) -> None:
        name = ("--name", pool_name)
        code, out, _ = run("inspect", postgres_url, *name, "--json", "--status", "completed")
        assert code == EXIT_OK
        assert sorted(r["key"] for r in json.loads(out)) == ["invoice-1", "invoice-2", "invoice-3"]
        _, out, _ = run("inspect", postgres_url, *name, "--json", "--key", "invoice-[12]")
        assert sorted(r["key"] for r in json.loads(out)) == ["invoice-1", "invoice-2"]
        _, out, _ = run(
            "inspect", postgres_url, *name, "--json", "--status", "failed", "--status", "queued"
        )
        assert sorted(r["key"] for r in json.loads(out)) == ["bad-1", "later"]
        code, out, _ = run("inspect", postgres_url, *name, "--status", "running")
        assert (code, out) == (EXIT_OK, "no tasks match (the pool holds 5)\n")
        _, out, _ = run("inspect", postgres_url, *name, "--key", "invoice-*")
        assert "3 of 5 tasks shown" in out

    def test_the_name_defaults_to_open_pools(
        self, run: Run, make_postgres_database: Callable[[], str]
    ) -> None:
        url = as_url(make_postgres_database())  # its own database: "default" is no test's own

        async def fill() -> str:
            with anyio.fail_after(30):
                async with harnpool.open_pool(url, workers=0) as pool:
                    return await pool.submit(square, 1)

        task_id = anyio.run(fill)
        code, out, _ = run("inspect", url, "--json")
        assert code == EXIT_OK
        assert task_id in [r["id"] for r in json.loads(out)]

    def test_an_unknown_pool_is_reported(
        self, run: Run, postgres_url: str, pool_name: str, filled: list[harnpool.TaskInfo]
    ) -> None:
        for command in ("inspect", "verify"):
            code, out, err = run(command, postgres_url, "--name", pool_name + "-other")
            assert (code, out) == (EXIT_UNREADABLE, "")
            assert "the database has no pool of that name" in err

    def test_an_undecodable_result_is_left_out_of_json(
        self, run: Run, postgres_dsn: str, postgres_url: str, pool_name: str,
        filled: list[harnpool.TaskInfo],
    ) -> None:  # fmt: skip
        _execute(
            postgres_dsn,
            "UPDATE harnpool_task SET result = '{\"cut' WHERE pool = %s AND key = 'invoice-2'",
            (pool_name,),
        )
        code, out, err = run("inspect", postgres_url, "--name", pool_name, "--json")
        assert code == EXIT_OK
        assert {r["key"]: r["result"] for r in json.loads(out)}["invoice-2"] is None
        assert "(key 'invoice-2'): its stored result is not valid JSON" in err


class TestVerify:
    def test_a_sound_pool_is_ok(
        self, run: Run, postgres_url: str, pool_name: str, filled: list[harnpool.TaskInfo]
    ) -> None:
        code, out, err = run("verify", postgres_url, "--name", pool_name)
        assert (code, err) == (EXIT_OK, "")
        assert out == (
            f"pool {pool_name!r} in {postgres_url!r}: ok: schema version {SCHEMA_VERSION}, "
            "5 tasks (queued 1, completed 3, failed 1)\n"
        )

    @pytest.mark.parametrize("column", ["args", "result"])
    def test_an_undecodable_value_is_corrupt(
        self, run: Run, postgres_dsn: str, postgres_url: str, pool_name: str, column: str,
        filled: list[harnpool.TaskInfo],
    ) -> None:  # fmt: skip
        # "later" is queued, so it keeps its arguments; a completed task keeps its result.
        key = "later" if column == "args" else "invoice-1"
        _execute(
            postgres_dsn,
            f"UPDATE harnpool_task SET {column} = '[1,' WHERE pool = %s AND key = %s",
            (pool_name, key),
        )
        code, out, err = run("verify", postgres_url, "--name", pool_name)
        assert (code, err) == (EXIT_UNREADABLE, "")
        task_id = next(t.id for t in filled if t.key == key)
        assert f"task {task_id} (key {key!r}): its stored {column} is not valid JSON" in out
        assert "corrupt: 1 undecodable values" in out

    def test_a_newer_schema_is_refused(
        self, run: Run, make_postgres_database: Callable[[], str]
    ) -> None:
        dsn = make_postgres_database()
        with PostgresStore.connect(dsn, "invoices") as store:
            store.migrate()
        _execute(dsn, "INSERT INTO harnpool_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        for command in ("verify", "inspect"):
            code, out, err = run(command, as_url(dsn), "--name", "invoices")
            assert (code, out) == (EXIT_UNREADABLE, "")
            assert f"harnpool schema version {SCHEMA_VERSION + 1}" in err
            assert "upgrade harnpool" in err

    def test_a_database_without_the_schema_is_unreadable(
        self, run: Run, make_postgres_database: Callable[[], str]
    ) -> None:
        code, out, err = run("verify", as_url(make_postgres_database()))
        assert (code, out) == (EXIT_UNREADABLE, "")
        assert "the database has no harnpool schema" in err

    def test_an_unreachable_database(self, run: Run, tmp_path: Any) -> None:
        url = f"postgresql://someone:secret@/db?host={tmp_path}"
        code, out, err = run("verify", url)
        assert (code, out) == (EXIT_UNREACHABLE, "")
        assert err.startswith("harnpool: pool 'default': connecting failed: cannot connect")
        assert err.count("\n") == 1
        assert "secret" not in err


class TestRefused:
    @pytest.mark.parametrize(
        "argv",
        [("compact",), ("salvage", "-o", "out.jsonl"), ("cancel", "t1"), ("fail", "t1"),
         ("requeue", "t1")],
    )  # fmt: skip
    def test_journal_commands_refuse_a_database(self, run: Run, argv: tuple[str, ...]) -> None:
        url = "postgresql://someone:secret@/db?host=/nowhere&password=other"
        code, out, err = run(argv[0], url, *argv[1:])
        assert (code, out) == (EXIT_REFUSED, "")
        assert f"{argv[0]} works on a journal file" in err
        assert "only inspect and verify read" in err
        assert "secret" not in err
        assert "other" not in err

    def test_a_blank_name_is_a_usage_error(self, run: Run, postgres_url: str) -> None:
        code, _, err = run("inspect", postgres_url, "--name", "")
        assert code == EXIT_USAGE
        assert "the pool name must be non-empty" in err
