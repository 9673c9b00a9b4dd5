"""The baseline of `make bench`: one FastAPI process doing the work of the stack's `POST /api/data/query`.

What it does per request, as the edge and the data service do: verify the ES256 bearer token (iss, aud, exp,
kid from the stack's JWKS) with verified tokens cached by their exact text and their expiry checked on every
use (services.core.tokens, the same verifier); validate the body (pydantic-core, parsed from the raw bytes in
one pass); run the statement on the tenant's SQLite file, data_dir/tenants/<tenant>.sqlite, created in WAL
mode as the data service creates it, through the data service's own Connection (authorizer, busy timeout,
statement timeout, row cap and byte budget); answer columns and rows in the edge's JSON.

Written as a careful engineer would write a fast monolith: uvloop and httptools, one `async def` route added
to FastAPI's router as a plain route that reads the Request itself (FastAPI's per-request dependency solving
and response handling weigh more than this endpoint's own work, and the edge skips them for its contract
routes too), orjson bytes out, one connection per tenant and role, no thread-pool hop. sqlite3 runs on the
event loop: for statements of `SELECT 1` size that is cheaper than any hand-off to a thread; a long statement
would stall every other request until it ends or its timeout interrupts it, which the data service avoids
with its worker threads.

Not modelled: table policies (a governed caller is refused, so no statement runs unprotected; the bench uses
a tenant admin, whom the stack does not govern either), audit, metrics, rate limits and the WAF. Keys come
from MONOLITH_JWKS_URL once, at start-up. Everything else is read from the stack's environment.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core.config import load_settings
from services.core.context import Principal
from services.core.errors import Code, InvalidArgument, PermissionDenied, ServiceError, Unavailable
from services.core.tokens import StaticKeys, TokenVerifier, keys_from_jwks
from services.data.model import Limits, QueryResult, checked_tenant
from services.data.sqlite_connection import Connection
from services.data.sqltext import scan

ROUTE = "/api/data/query"
_UINT32 = 2**32 - 1
_INT64 = 2**63
_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAVAILABLE: 503,
}

Int64 = Annotated[int, Field(ge=-_INT64, lt=_INT64)]
Param = None | bool | Int64 | float | str | list[Any] | dict[str, Any]


class QueryBody(BaseModel):
    """The edge's QueryRequest in JSON: unknown fields and wrong types are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sql: str
    params: list[Param] = []
    max_rows: int = Field(0, ge=0, le=_UINT32)
    timeout_ms: int = Field(0, ge=0, le=_UINT32)


class Tenants:
    """One open connection per tenant and role (read/write or read-only), used only from the event loop."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._open: dict[tuple[str, bool], Connection] = {}

    def connection(self, tenant: str, writable: bool) -> Connection:
        conn = self._open.get((tenant, writable))
        if conn is None:
            path = self._folder / f"{checked_tenant(tenant)}.sqlite"
            try:
                _create_file(path)
                conn = self._open[(tenant, writable)] = Connection(path, writable)
            except (sqlite3.Error, OSError) as exc:
                raise Unavailable(f"cannot open the tenant database: {exc}") from exc
        return conn

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


def _create_file(path: Path) -> None:
    """As the data service provisions a tenant: its own file, WAL (persistent), owner-only."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    os.chmod(path, 0o600)


def _bind(sql: str, params: list[Any]) -> tuple[str, list[Any] | dict[str, Any]]:
    """$N parameters bind by number, `?` in order, as the data service binds them; JSON values as text."""
    statement = scan(sql)
    values = [orjson.dumps(p).decode() if isinstance(p, list | dict) else p for p in params]
    if not statement.params:
        return statement.text, values
    if statement.param_count != len(values):
        raise InvalidArgument(
            f"the statement uses {statement.param_count} parameter(s) ($1..$N) but {len(values)} were given"
        )
    return statement.text, {str(number): value for number, value in enumerate(values, 1)}


_PLAIN = frozenset({type(None), int, str})


def _cell(value: Any) -> Any:
    """The edge's JSON for a cell SQLite can hold: bytes as base64, non-finite floats as strings."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _answer(result: QueryResult) -> bytes:
    rows = [
        row if all(type(v) in _PLAIN for v in row) else [_cell(v) for v in row] for row in result.rows
    ]  # rows of ints, text and NULL go to orjson as they are (tuples encode as arrays)
    return orjson.dumps(
        {
            "columns": [{"name": c.name, "type": c.type} for c in result.columns],
            "rows": rows,
            "row_count": len(rows),
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed_ms,
            "affected_rows": result.affected_rows,
            "backend": result.backend,
        }
    )


def _error(code: Code, message: str, status: int = 0) -> Response:
    body = orjson.dumps({"code": int(code), "message": message})
    return Response(body, status_code=status or _STATUS.get(code, 500), media_type="application/json")


def _load_keys(url: str) -> StaticKeys:
    with urllib.request.urlopen(url, timeout=10) as response:
        return StaticKeys(keys_from_jwks(json.load(response)))


settings = load_settings("data")
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    keys = _load_keys(os.environ["MONOLITH_JWKS_URL"])
    state["verifier"] = TokenVerifier(keys, settings.auth.issuer, settings.auth.audience)
    state["tenants"] = tenants = Tenants(settings.process.data_dir / "tenants")
    try:
        yield
    finally:
        tenants.close()


async def query(request: Request) -> Response:
    if request.headers.get("content-type", "").partition(";")[0].strip() != "application/json":
        return _error(Code.INVALID_ARGUMENT, "Content-Type must be application/json", 415)
    try:
        principal: Principal = await state["verifier"].verify_header(request.headers.get("authorization"))
        body = QueryBody.model_validate_json(await request.body())
        return Response(_run(principal, body), media_type="application/json")
    except ValidationError as exc:
        return _error(Code.INVALID_ARGUMENT, _invalid(exc))
    except ServiceError as exc:
        return _error(exc.code, exc.message)


def _run(principal: Principal, body: QueryBody) -> bytes:
    if not principal.is_admin:
        raise PermissionDenied("table policies are not modelled by this baseline: tenant admins only")
    limits = Limits.of(settings, body.timeout_ms, body.max_rows)
    sql, bound = _bind(body.sql, body.params)
    conn = state["tenants"].connection(principal.tenant, principal.can_write)
    return _answer(conn.query(sql, bound, limits))


def _invalid(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
app.router.add_route(ROUTE, query, methods=["POST"])
