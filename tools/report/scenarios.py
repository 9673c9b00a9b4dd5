"""The calls that check a running stack over HTTP and WebSocket, written once: `make report` runs
`SCENARIOS` and records every answer (tools/report/smoke.py); tests/integration/test_endpoints.py runs the
same functions and asserts on what they return.

A scenario makes its calls through a `Caller` (caller.py) and returns the answers; it asserts nothing, so
the report can show a failure instead of stopping at it. Two levels of expectation, on purpose: each call
states the status it should get (anything else is a `Caller.surprises` entry, which fails a report step) and
each `Scenario.passed` is the report's verdict on the rest; the tests assert much more than either.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from websockets.sync.client import ClientConnection, connect

from tools.report.caller import WAIT_S, Caller, json_of
from tools.report.scrub import REDACTED

TELEMETRY = "naksha.telemetry"  # the topic the stack publishes heartbeats on by itself
ECHO = {"n": 2}  # published over the socket itself, after the HTTP publish
AUTH_SERIES = 'launchpad_rpc_requests_total{service="auth"}'
PROMETHEUS_RESULT_TYPES = ("vector", "matrix", "scalar", "string")
ORDERS_TABLE = "CREATE TABLE orders (id integer primary key, customer text, amount integer)"
ORDERS_ROWS = "INSERT INTO orders VALUES (1, 'ada', 30), (2, 'bob', 12), (3, 'ada', 7)"
ORDERS_COUNT = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """What differs between the report's run and the tests': names, payloads, where the audit log is."""

    tag: str  # prefix of every name a run creates: "report", "it"
    admin_password: str
    audit_log: Path
    upload: bytes  # stored and read back through signed URLs
    message: dict[str, Any]  # published over HTTP to a fresh topic
    scraped: bool = True  # the metrics service's source sees this stack's counters


# --- the scenarios ----------------------------------------------------------------------------------------


def health(caller: Caller, ctx: Context) -> httpx.Response:
    return caller.call("GET", "/health")


def login(caller: Caller, ctx: Context) -> httpx.Response:
    """The admin's login; its token then goes with every call of the session."""
    body = {"username": "admin", "password": ctx.admin_password}
    response = caller.call("POST", "/auth/login", body, shown={**body, "password": REDACTED}, auth=False)
    if response.is_success:
        caller.session.token = response.json()["token"]
    return response


def select_one(caller: Caller, ctx: Context) -> httpx.Response:
    return caller.call("POST", "/api/data/query", {"sql": "SELECT 1"})


USER_LISTINGS = ("/api/users", "/api/auth/users")  # the route and its alias


@dataclass(frozen=True)
class Users:
    name: str
    created: httpx.Response
    listings: dict[str, httpx.Response]  # by path
    login: httpx.Response
    me: httpx.Response | None  # None: the login failed
    deleted: httpx.Response


def usernames(listing: httpx.Response) -> list[str]:
    return [u["username"] for u in listing.json().get("users", [])] if listing.is_success else []


def users(caller: Caller, ctx: Context) -> Users:
    """A developer created, found in both listings, logged in as, and deleted again."""
    name, password = f"{ctx.tag}{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(12)
    body = {"username": name, "password": password, "roles": ["developer"]}
    created = caller.call("POST", "/api/users", body, shown={**body, "password": REDACTED})
    listings = {path: caller.send("GET", path) for path in USER_LISTINGS}
    for path, listing in listings.items():  # names only: a live database may hold many users
        caller.show(f"GET {path} (usernames)", usernames(listing), listing.status_code)
    credentials = {"username": name, "password": password}
    shown = {**credentials, "password": REDACTED}
    logged_in = caller.call("POST", "/auth/login", credentials, shown=shown, auth=False)
    me = None
    if logged_in.is_success:
        own = {"Authorization": f"Bearer {logged_in.json()['token']}"}
        me = caller.call("GET", "/api/auth/me", headers=own, auth=False)
    deleted = caller.call("DELETE", f"/api/users/{name}")
    return Users(name, created, listings, logged_in, me, deleted)


@dataclass(frozen=True)
class Storage:
    path: str
    data: bytes  # what was uploaded
    bucket: httpx.Response
    put: httpx.Response  # the signed PUT URL and the headers it was signed with
    tampered: httpx.Response  # the upload with its signature altered
    uploaded: httpx.Response
    get: httpx.Response  # the signed GET URL
    downloaded: httpx.Response
    deleted: httpx.Response


def tampered(url: str) -> str:
    """The URL with its signature changed (embedded: `sig`; S3: `X-Amz-Signature`)."""
    parts = urlsplit(url)
    query = [
        (k, ("0" if v[0] != "0" else "1") + v[1:]) if k in ("sig", "X-Amz-Signature") else (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def storage(caller: Caller, ctx: Context) -> Storage:
    """A bucket, an upload through a signed URL (refused once its signature is altered), the download."""
    bucket = f"{ctx.tag}-{uuid.uuid4().hex[:8]}"
    path = f"{bucket}/a/b.txt"
    made = caller.call("POST", "/api/storage/buckets", {"name": bucket})
    put = caller.call("POST", "/api/storage/signed-url", {"path": path, "method": "PUT"})
    url, headers = json_of(put)["url"], put.json().get("headers", {})  # S3 signs owner and type: sent back
    size = f"({len(ctx.upload)} bytes)"
    # Status only: an S3 error body may quote the altered signature, which is the real one but a character.
    bad = caller.fetch(
        "PUT", tampered(url), f"PUT <signed URL, signature altered> {size}", content=ctx.upload,
        headers=headers, expect=403, body_shown=False,
    )  # fmt: skip
    uploaded = caller.fetch("PUT", url, f"PUT <signed URL> {size}", content=ctx.upload, headers=headers)
    get = caller.call("POST", "/api/storage/signed-url", {"path": path, "method": "GET"})
    downloaded = caller.fetch("GET", json_of(get)["url"], "GET <signed URL>")
    deleted = caller.call("POST", "/api/storage/object/delete", {"path": path})
    return Storage(path, ctx.upload, made, put, bad, uploaded, get, downloaded, deleted)


@dataclass(frozen=True)
class Wpk:
    sha256: str
    packed: httpx.Response
    unsigned: httpx.Response  # a deploy before the signature
    signed: httpx.Response
    deployed: httpx.Response
    listed: httpx.Response  # GET /api/wpk/deployments
    events: list[dict[str, Any]]  # the audit log's entries for this artifact


def audit_events(audit_log: Path, sha256: str) -> list[dict[str, Any]]:
    lines = audit_log.read_text().splitlines()
    return [event for event in map(json.loads, lines) if event.get("sha256") == sha256]


def deployment_ids(listing: httpx.Response) -> list[str]:
    return [d["deployment_id"] for d in listing.json().get("deployments", [])] if listing.is_success else []


def wpk(caller: Caller, ctx: Context) -> Wpk:
    """Pack, a deploy refused while unsigned, sign, deploy, the deployments, the audit entries."""
    sample = {"name": f"{ctx.tag}-{uuid.uuid4().hex[:6]}", "version": "1.0.0"}
    sample["steps"] = [{"name": "hello", "run": "echo hello"}]
    packed = caller.call("POST", "/api/wpk/pack", {"wpk": sample})
    artifact = json_of(packed)
    target = {"artifact_id": artifact["artifact_id"]}
    unsigned = caller.call("POST", "/api/wpk/deploy", target, expect=400)  # the signature is checked first
    signed = caller.call("POST", "/api/wpk/sign", {"artifact": artifact["artifact_id"]})
    deployed = caller.call("POST", "/api/wpk/deploy", target)
    listed = caller.send("GET", "/api/wpk/deployments")
    caller.show("GET /api/wpk/deployments (deployment ids)", deployment_ids(listed), listed.status_code)
    events = audit_events(ctx.audit_log, artifact["sha256"])
    caller.show(f"audit.log entries with sha256 {artifact['sha256'][:12]}...", events)
    return Wpk(artifact["sha256"], packed, unsigned, signed, deployed, listed, events)


@dataclass(frozen=True)
class Realtime:
    subscribed: dict[str, Any]  # the first subscription's acknowledgement
    heartbeat: dict[str, Any]  # a message of TELEMETRY
    published: httpx.Response  # POST /api/realtime/publish to a fresh topic
    received: dict[str, Any]  # that message, on the socket
    acknowledged: dict[str, Any]  # the "published" frame of ECHO, published over the socket
    echoed: dict[str, Any]  # ECHO coming back as a message


def next_frame(
    ws: ClientConnection, frames: list[dict[str, Any]], kinds: tuple[str, ...], topic: str = ""
) -> dict[str, Any]:
    """The next frame of one of `kinds` (of `topic`, when given), kept in `frames`; frames of other topics
    interleave (heartbeats); an error frame stops the scenario."""
    deadline = time.monotonic() + WAIT_S
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame.get("type") == "error":
            raise RuntimeError(f"error frame: {json.dumps(frame)}")
        if frame["type"] in kinds and (not topic or frame.get("topic") == topic):
            frames.append(frame)
            return frame


def realtime(caller: Caller, ctx: Context) -> Realtime:
    """/ws/realtime: the heartbeat topic, a fresh topic published to over HTTP, then over the socket."""
    base = str(caller.session.http.base_url).rstrip("/").replace("http://", "ws://")
    topic, frames = f"{ctx.tag}.{uuid.uuid4().hex[:8]}", []
    try:
        with connect(f"{base}/ws/realtime?token={caller.session.token}", open_timeout=WAIT_S) as ws:
            ws.send(json.dumps({"subscribe": TELEMETRY}))
            subscribed = next_frame(ws, frames, ("subscribed",))
            heartbeat = next_frame(ws, frames, ("message",), TELEMETRY)
            ws.send(json.dumps({"subscribe": topic}))
            next_frame(ws, frames, ("subscribed",), topic)
            published = caller.call("POST", "/api/realtime/publish", {"topic": topic, "msg": ctx.message})
            received = next_frame(ws, frames, ("message",), topic)
            ws.send(json.dumps({"publish": {"topic": topic, "msg": ECHO}}))
            # The echo of our own message and the "published" acknowledgement may come in either order.
            seen: dict[str, dict[str, Any]] = {}
            while len(seen) < 2:
                frame = next_frame(ws, frames, ("published", "message"), topic)
                seen[frame["type"]] = frame
    finally:
        caller.show(
            'WS /ws/realtime?token=<redacted>: {"subscribe": ...}, {"publish": ...}, the frames', frames
        )
    return Realtime(subscribed, heartbeat, published, received, seen["published"], seen["message"])


def create_orders(caller: Caller) -> list[httpx.Response]:
    """A small table for the schema-aware assistant. An existing `orders` is kept as it is (CREATE fails,
    nothing is inserted): the questions asked about it are read-only."""
    created = caller.call("POST", "/api/data/query", {"sql": ORDERS_TABLE}, check=False)
    if not created.is_success:
        return [created]
    return [created, caller.call("POST", "/api/data/query", {"sql": ORDERS_ROWS})]


def ai_suggest(caller: Caller, ctx: Context) -> httpx.Response:
    return caller.call("POST", "/api/ai/sql/suggest", {"context": "SELECT * FROM ord", "table": "orders"})


@dataclass(frozen=True)
class AiQuery:
    answer: httpx.Response
    ran: httpx.Response | None  # the SQL it wrote, run; None when it wrote none that is valid


def ai_query(caller: Caller, ctx: Context) -> AiQuery:
    answer = caller.call("POST", "/api/ai/query", {"question": "how many orders are there?"})
    if not (answer.is_success and answer.json().get("valid")):
        return AiQuery(answer, None)
    return AiQuery(answer, caller.call("POST", "/api/data/query", {"sql": answer.json()["sql"]}))


@dataclass(frozen=True)
class Ai:
    orders: list[httpx.Response]
    suggestion: httpx.Response
    query: AiQuery


def ai(caller: Caller, ctx: Context) -> Ai:
    """Both AI calls over `orders`; a table this run created is dropped again."""
    orders = create_orders(caller)
    try:
        return Ai(orders, ai_suggest(caller, ctx), ai_query(caller, ctx))
    finally:
        if orders[0].is_success:
            caller.call("POST", "/api/data/query", {"sql": "DROP TABLE orders"})


@dataclass(frozen=True)
class Logs:
    login_id: str
    failed_login: httpx.Response
    login_lines: httpx.Response  # the logs query for the failed login's request id
    query_id: str
    query: httpx.Response
    query_lines: httpx.Response  # the logs query for the SQL query's request id


def _lines(
    caller: Caller, service: str, request_id: str, done: Callable[[list[Any]], bool]
) -> httpx.Response:
    body = {"query": f'{{service="{service}"}} |= "{request_id}"', "limit": 10}
    return caller.until(
        "POST", "/api/logs/query", body, lambda r: r.status_code != 200 or done(r.json()["entries"])
    )


def logs(caller: Caller, ctx: Context) -> Logs:
    """Two requests found again by their request ids: a failed login (the warning and the RPC's line) and a
    query (the RPC's line, in the caller's tenant)."""
    login_id, query_id = f"{ctx.tag}-logs-{uuid.uuid4().hex}", f"{ctx.tag}-logs-{uuid.uuid4().hex}"
    ghost = {"username": f"ghost{uuid.uuid4().hex[:8]}", "password": "wrong-password"}
    failed = caller.call(
        "POST", "/auth/login", ghost, expect=401, shown={**ghost, "password": REDACTED},
        headers={"x-request-id": login_id}, auth=False,
    )  # fmt: skip
    login_lines = _lines(caller, "auth", login_id, lambda entries: len(entries) >= 2)
    sql = caller.call("POST", "/api/data/query", {"sql": "SELECT 1"}, headers={"x-request-id": query_id})
    query_lines = _lines(caller, "data", query_id, bool)
    return Logs(login_id, failed, login_lines, query_id, sql, query_lines)


def metrics(caller: Caller, ctx: Context) -> httpx.Response:
    """The auth service's request counter, once its series arrives; a Prometheus that does not scrape this
    stack gets a query any Prometheus answers."""
    if not ctx.scraped:
        return caller.call("POST", "/api/metrics/query", {"query": "up"})
    body = {"query": AUTH_SERIES}
    return caller.until(
        "POST", "/api/metrics/query", body, lambda r: r.status_code != 200 or r.json()["data"]["result"]
    )


# --- the list ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario(Generic[T]):
    """One entry of the list: every `run` takes the same arguments (some ignore the context), so the report
    runs the list as it is; the tests call the functions themselves for their typed outcomes."""

    name: str
    title: str  # the report's heading
    service: str  # the backend that answers, whose dependency modes the report shows; "": the edge
    run: Callable[[Caller, Context], T]
    passed: Callable[[T], bool] = lambda outcome: True  # the report's verdict beyond the statuses
    needs_admin: bool = True  # runs only once the admin's token is there
    uncut: bool = False  # the report shows its answers whole


def _rows_are_one(response: httpx.Response) -> bool:
    return response.json().get("rows") == [[1]]


def _listed_everywhere(outcome: Users) -> bool:
    return all(outcome.name in usernames(listing) for listing in outcome.listings.values())


def _stored_and_read_back(outcome: Storage) -> bool:
    return outcome.uploaded.is_success and outcome.downloaded.content == outcome.data


def _audited(outcome: Wpk) -> bool:
    done = {(e["action"].rsplit("/", 1)[-1], e["outcome"]) for e in outcome.events}
    return {("PackWpk", "ok"), ("SignArtifact", "ok"), ("DeployArtifact", "ok")} <= done


def _entries_listed(outcome: Logs) -> bool:
    answers = (outcome.login_lines, outcome.query_lines)
    return all(isinstance(answer.json().get("entries"), list) for answer in answers)


def _prometheus_shaped(response: httpx.Response) -> bool:
    answer = response.json()
    result_type = (answer.get("data") or {}).get("resultType")
    return answer.get("status") == "success" and result_type in PROMETHEUS_RESULT_TYPES


HEALTH = Scenario("health", "Gateway health: GET /health", "", health, needs_admin=False, uncut=True)
LOGIN = Scenario("login", "Login: POST /auth/login (token redacted)", "auth", login, needs_admin=False)
SCENARIOS: tuple[Scenario[Any], ...] = (
    HEALTH,
    LOGIN,
    Scenario("select_one", "SQL: SELECT 1", "data", select_one, _rows_are_one),
    Scenario("users", "Users: create, list, log in, delete", "auth", users, _listed_everywhere),
    Scenario(
        "storage",
        "Storage: signed URLs (signature redacted), upload then download",
        "storage",
        storage,
        _stored_and_read_back,
    ),
    Scenario("wpk", "WPK: pack, sign, deploy, audit entries", "deploy", wpk, _audited),
    Scenario("realtime", "Realtime: /ws/realtime subscribe and receive", "realtime", realtime),
    Scenario("ai", "AI: SQL suggestion and question to SQL", "ai", ai),
    Scenario("logs", "Logs: POST /api/logs/query", "logs", logs, _entries_listed),
    Scenario("metrics", "Metrics: POST /api/metrics/query", "metrics", metrics, _prometheus_shaped),
)
