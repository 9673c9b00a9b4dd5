"""PlatformDb.transaction (services/core/db.py) on SQLite and, when POSTGRES_DSN is set, on PostgreSQL:
statements commit together or not at all, other awaits may run inside, concurrent writers of one row wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.core.db import PgPlatformDb, PlatformDb, SqlitePlatformDb, UniqueViolation
from tests.support import PrivateDatabase

SCHEMA = "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);"


def _migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "txtest" / "migrations"
    folder.mkdir(parents=True)
    (folder / "001_counters.sql").write_text(SCHEMA)
    return folder


@pytest.fixture
def pg_server(pg_dsn: str) -> Iterator[str]:
    database = PrivateDatabase(pg_dsn, prefix="lp_txtest")
    try:
        yield database.dsn
    finally:
        database.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PlatformDb]:
    folder = _migrations(tmp_path)
    if request.param == "sqlite":
        sqlite = SqlitePlatformDb(tmp_path / "platform.sqlite", folder)
        await sqlite.open()
        opened: PlatformDb = sqlite
    else:
        opened = PgPlatformDb(request.getfixturevalue("pg_server"), folder)
        await opened.ensure_ready()  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        await opened.close()


async def _value(db: PlatformDb, name: str) -> int | None:
    row = await db.fetchone("SELECT value FROM counters WHERE name = ?", (name,))
    return None if row is None else int(row["value"])


async def test_statements_commit_together(db: PlatformDb) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 1))
        await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("b", 2))
        assert (await tx.fetchone("SELECT value FROM counters WHERE name = ?", ("b",))) == {"value": 2}
        assert await _value(db, "a") is None  # not visible outside before the commit
    assert (await _value(db, "a"), await _value(db, "b")) == (1, 2)


async def test_an_exception_rolls_everything_back(db: PlatformDb) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 1))
            raise RuntimeError("changed my mind")
    assert await _value(db, "a") is None
    # A failed statement is the mapped error, and the connection is usable afterwards.
    await db.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 1))
    with pytest.raises(UniqueViolation):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("b", 2))
            await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 3))
    assert (await _value(db, "a"), await _value(db, "b")) == (1, None)
    for _ in range(10):  # every pooled connection is back and clean
        assert await _value(db, "a") == 1


async def test_writers_of_one_row_wait_for_each_other_across_awaits(db: PlatformDb) -> None:
    """Read-modify-write with an await in the middle: without the lock the increments would be lost."""
    await db.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("n", 0))

    async def increment() -> None:
        async with db.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE counters SET value = value WHERE name = ? RETURNING value", ("n",)
            )  # takes the row (PostgreSQL) or the file (SQLite) for the rest of the transaction
            assert row is not None
            await asyncio.sleep(0.01)  # another service is called meanwhile
            await tx.execute("UPDATE counters SET value = ? WHERE name = ?", (int(row["value"]) + 1, "n"))

    await asyncio.gather(*(increment() for _ in range(6)))
    assert await _value(db, "n") == 6


async def test_a_cancelled_transaction_rolls_back_and_frees_its_connection(db: PlatformDb) -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 1))
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(stuck())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _value(db, "a") is None
    async with db.transaction() as tx:  # the lock is gone: a new writer gets in at once
        await tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("a", 2))
    assert await _value(db, "a") == 2
