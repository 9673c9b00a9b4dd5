"""`make bench`, policies: `SELECT count(*)` over a table of 100,000 rows, governed by an own-rows policy
against the same table ungoverned, in one run, through the real data service (gRPC, port 0) as a developer.
PostgreSQL (row-level security) when POSTGRES_DSN is set, and always SQLite (the shadow views).

Two cases, the policy column indexed as the README advises:
- the developer owns 1% of the rows (the usual case): the governed count reads them through the index;
  target: no slower than counting the ungoverned table (<= 1.3x);
- the developer owns every row (the worst case: the predicate runs on all 100,000): reported against the
  ungoverned count, and held to the same condition written as a WHERE by hand (<= 1.3x): what the policy
  costs beyond the filter itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.auth.store import AuthStore, PolicyRecord
from services.core import internal
from services.core.config import Settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.data.servicer import build
from tests.support import PrivateDatabase, make_token, metadata, running_service

ROWS = 100_000
ROUNDS = int(os.environ.get("BENCH_POLICY_ROUNDS", "30"))
TARGET = 1.3
TENANT = "bench"
OWN_ROWS = {  # governs `mixed` and `mine`, not `open`
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "mi*",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
SETUP = [
    "CREATE TABLE {t} (id integer PRIMARY KEY, owner text NOT NULL, body text)",
    "CREATE INDEX {t}_owner ON {t} (owner)",
]
# Owners: `dev` for every row, or for one row in a hundred (the others spread over 99 more owners).
OWNER = {"all": "'dev'", "some": "CASE WHEN i % 100 = 0 THEN 'dev' ELSE 'u' || (i % 100) END"}
FILL = {
    "postgresql": "INSERT INTO {t} SELECT i, {owner}, 'row ' || i FROM generate_series(1, "
    + str(ROWS)
    + ") AS i",
    "sqlite": "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < " + str(ROWS) + ") "
    "INSERT INTO {t} SELECT i, {owner}, 'row ' || i FROM s",
}
TABLES = {"mixed": "some", "mine": "all", "open": "all"}
QUERIES = {  # name -> (statement, rows it counts)
    "governed, 1% visible": ("SELECT count(*) FROM mixed", ROWS // 100),
    "governed, all visible": ("SELECT count(*) FROM mine", ROWS),
    "ungoverned": ("SELECT count(*) FROM open", ROWS),
    "ungoverned + WHERE": ("SELECT count(*) FROM open WHERE owner = 'dev'", ROWS),
}
ANALYZE = {"postgresql": "ANALYZE {t}", "sqlite": "ANALYZE"}


async def _measure(backend: str) -> dict[str, float]:
    async with running_service("data", build) as (runtime, channel):
        stub = data_pb2_grpc.DataServiceStub(channel)
        admin = metadata(make_token(sub="root", tenant=TENANT, roles=("admin",)))
        dev = metadata(make_token(sub="dev", tenant=TENANT, roles=("developer",)))

        async def sql(who: tuple[tuple[str, str], ...], text: str) -> data_pb2.QueryResponse:
            return await stub.Query(data_pb2.QueryRequest(sql=text), metadata=who, timeout=120)

        for table, owners in TABLES.items():
            for statement in [*SETUP, FILL[backend], ANALYZE[backend]]:
                await sql(admin, statement.format(t=table, owner=OWNER[owners]))
        await _apply(stub, runtime.settings)
        for name, (text, expected) in QUERIES.items():  # the policy really filters, and nothing else does
            counted = (await sql(dev, text)).rows[0].values[0].int
            if counted != expected:
                raise SystemExit(f"{backend}: {name} counted {counted} rows, expected {expected}")
        return await _timed({name: lambda text=text: sql(dev, text) for name, (text, _) in QUERIES.items()})


async def _apply(stub: data_pb2_grpc.DataServiceStub, settings: Settings) -> None:
    """As auth stores a policy: the row and the revision in the platform database, applied by data."""
    db = await open_platform_db(settings, Registry(), migrations=AUTH_MIGRATIONS)
    try:
        now = int(time.time() * 1000)
        async with AuthStore(db).policy_transaction() as tx:
            await tx.ensure_tenant(TENANT, "root", now)
            await tx.insert(PolicyRecord(TENANT, OWN_ROWS["name"], OWN_ROWS, now, "root"))
            await tx.bump_revision(TENANT)
    finally:
        await db.close()
    policy = struct_pb2.Struct()
    json_format.ParseDict(OWN_ROWS, policy)
    secret = internal.internal_secret(settings)
    request = data_pb2.ApplyPoliciesRequest(tenant=TENANT, policies=[policy], revision=1)
    await stub.ApplyPolicies(request, metadata=(("x-request-id", "bench"), (internal.METADATA_KEY, secret)))


async def _timed(calls: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, float]:
    """Median ms per query; the queries take turns, so a noisy moment hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _run(backend: str) -> dict[str, float]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"launchpad-bench-policies-{backend}-"))
    env = {"LAUNCHPAD_DATA_DIR": str(data_dir), "LAUNCHPAD_LOG_DIR": str(data_dir / "logs")}
    logging.disable(logging.INFO)  # one log line per RPC: not on the terminal
    database = None
    if backend == "postgresql":
        database = PrivateDatabase(os.environ["POSTGRES_DSN"], prefix="lp_bench")
        env["POSTGRES_DSN"] = database.dsn
        env["SIMULATION_MODE"] = "false"
    else:
        env["SIMULATION_MODE"] = "true"
    saved = {name: os.environ.get(name) for name in [*env, "POSTGRES_DSN"]}
    os.environ.pop("POSTGRES_DSN", None)
    os.environ.update(env)
    try:
        return asyncio.run(_measure(backend))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if database is not None:
            database.drop()


def main() -> int:
    backends = (["postgresql"] if os.environ.get("POSTGRES_DSN") else []) + ["sqlite"]
    print(
        f"\npolicies: SELECT count(*) over {ROWS:,} rows as a developer, own-rows policy, median of {ROUNDS}"
    )
    checks = []
    for backend in backends:
        medians = _run(backend)
        for name, ms in medians.items():
            print(f"  {backend:<10} {name:<22} {ms:8.2f} ms")
        checks += [
            (
                f"{backend} governed (1%) / ungoverned",
                medians["governed, 1% visible"] / medians["ungoverned"],
            ),
            (
                f"{backend} governed (all) / same WHERE",
                medians["governed, all visible"] / medians["ungoverned + WHERE"],
            ),
        ]
        print(
            f"  {backend:<10} governed (all) / ungoverned: {medians['governed, all visible'] / medians['ungoverned']:.2f}"
        )
    if "postgresql" not in backends:
        print("  postgresql: skipped (set POSTGRES_DSN to a server whose user may create databases)")
    print("ratios:")
    for label, value in checks:
        print(f"  {label:<40} {value:5.2f}  (target <= {TARGET})  {'ok' if value <= TARGET else 'MISSED'}")
    return 0 if all(value <= TARGET for _, value in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
