"""The seed's integration list (Phase F, "Tests (integration)"), against the whole stack as users run it.

Every built service and the edge run as separate processes on the documented ports (edge 8001, services
8011-8018, their /metrics on 9011-9018), started by the launcher `make up` uses, and are exercised over real
HTTP and WebSocket only. The module runs twice, one stack after the other on the same ports:

- "embedded": every dependency variable stripped, so each dependency runs its embedded default;
- "live": the real servers CI starts (tests.conftest.LIVE_ENV) with SIMULATION_MODE=false, so nothing may
  fall back unnoticed. Skipped when they are not configured, a failure under LAUNCHPAD_REQUIRE_LIVE=1.

The calls are tools/report/scenarios.py's, the ones `make report` makes and records; the assertions are
here. `TESTED_BY` at the end names the test of every scenario, so a new one cannot go untested.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.core.audit import verify_chain
from services.core.config import EDGE_PORT, METRICS_PORT_OFFSET, SERVICES, built_services
from services.launcher import Stack
from tests.conftest import LIVE_ENV
from tests.support import TOPOLOGIES, PrivateDatabase, need_env
from tools.report import scenarios
from tools.report.caller import Caller, Session
from tools.report.scenarios import SCENARIOS, Context

PASSWORD = "endpoints-admin-pw-1"
DOCUMENTED_PORTS = (
    EDGE_PORT,
    *SERVICES.values(),
    *(port + METRICS_PORT_OFFSET for port in SERVICES.values()),
)
# Variables that would make a dependency live or move a port: none reaches the embedded run.
STRIPPED_PREFIXES = ("POSTGRES_", "REDIS_", "KAFKA_", "MINIO_", "VAULT_", "BAO_", "PROM_", "LOKI_", "OPENAI_")
STRIPPED_PREFIXES += ("COSIGN_", "RUNTIME_AGENT_", "LAUNCHPAD_", "SIMULATION_MODE")
# In the live run, these dependencies (service -> names) must be live; every other one embedded: there is
# no Loki, OpenAI endpoint or runtime agent to run here (their adapters have contract tests instead).
LIVE_DEPENDENCIES = {
    "data": {"sql"},
    "auth": {"sql"},
    "storage": {"objects", "sql"},  # sql: the tenant's policies, read from the platform database
    "deploy": {"sql", "objects", "signing"},
    "realtime": {
        "kafka",
        "sql",
    },  # KAFKA_URL wins over REDIS_URL for realtime; the edge's rate limits use Redis
    "metrics": {"prometheus"},
}


@dataclass
class Run:
    mode: str  # "embedded" or "live"
    stack: Stack

    @property
    def data_dir(self) -> Path:
        return Path(self.stack.env["LAUNCHPAD_DATA_DIR"])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_ports_free(timeout_s: float = 15) -> None:
    """The documented ports, free: the previous run's processes are gone and no `make up` is running
    (gRPC servers set SO_REUSEPORT, so a second stack would silently share ports with the first)."""
    deadline = time.monotonic() + timeout_s
    while busy := [port for port in DOCUMENTED_PORTS if listening(port)]:
        if time.monotonic() > deadline:
            pytest.fail(f"ports {busy} are in use: stop the Launchpad running there (make up?) and rerun")
        time.sleep(0.2)


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
    )
    return env


@pytest.fixture(
    scope="module", params=[(m, t) for t in TOPOLOGIES for m in ("embedded", "live")], ids="-".join
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    mode, topology = request.param
    env = base_env(tmp_path_factory.mktemp(f"endpoints-{mode}-{topology}"))
    env["LAUNCHPAD_TOPOLOGY"] = topology
    database = None
    if mode == "live":
        live = {name: LIVE_ENV[name] or need_env(name) for name in LIVE_ENV}
        database = PrivateDatabase(live["POSTGRES_DSN"])
        env.update(live, POSTGRES_DSN=database.dsn, SIMULATION_MODE="false")
        env["VAULT_TRANSIT_KEY"] = f"lp-it-{uuid.uuid4().hex[:8]}"
    try:
        wait_ports_free()
        stack = Stack(env)
        stack.start()
        try:
            yield Run(mode, stack)
        finally:
            stack.stop()
            wait_ports_free()  # the next run binds the same ports
    finally:
        if database is not None:
            database.drop()


@pytest.fixture(scope="module")
def client(run: Run) -> Iterator[httpx.Client]:
    assert run.stack.edge_url == f"http://127.0.0.1:{EDGE_PORT}"
    with httpx.Client(base_url=run.stack.edge_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def context(run: Run) -> Context:
    upload = f"hello from the {run.mode} run\n".encode() * 100
    message = {"mode": run.mode, "n": 1}
    return Context("it", PASSWORD, run.data_dir / "audit.log", upload, message)


@pytest.fixture(scope="module")
def session(client: httpx.Client) -> Session:
    return Session(client)


@pytest.fixture(scope="module")
def token(session: Session, context: Context) -> str:
    response = scenarios.login(Caller(session), context)
    assert response.status_code == 200, response.text
    assert session.token == response.json()["token"]  # every later call of the session carries it
    return response.json()["token"]


@pytest.fixture(scope="module")
def admin(session: Session, token: str) -> Caller:
    """Calls as the admin: the session holds the admin's token."""
    return Caller(session)


# --- the seed's list ------------------------------------------------------------------------------------


def test_gateway_health_reports_the_modes(run: Run, client: httpx.Client, context: Context) -> None:
    response = scenarios.health(Caller(Session(client)), context)  # no token: /health is public
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == set(built_services())
    assert all(s["status"] == "SERVING" for s in body["services"].values()), body
    modes = {
        (service, dep["name"]): dep["mode"]
        for service, entry in body["services"].items()
        for dep in entry["dependencies"]
    }
    if run.mode == "embedded":
        assert set(modes.values()) == {"embedded"}, modes
        assert body["env"] == "SIM"
        return
    expected = {(s, name) for s, names in LIVE_DEPENDENCIES.items() for name in names}
    assert expected <= set(modes), f"missing dependencies: {expected - set(modes)}"
    for key, mode in modes.items():
        assert mode == ("live" if key in expected else "embedded"), (key, mode)
    unhealthy = [
        (s, d["name"], d["detail"])
        for s, e in body["services"].items()
        for d in e["dependencies"]
        if not d["healthy"]
    ]
    assert not unhealthy
    # "LIVE" only when nothing at all is embedded; Loki and the runtime agent are not available here.
    assert body["env"] == ("LIVE" if set(modes.values()) == {"live"} else "SIM")


def test_select_one_is_exactly_one(admin: Caller, context: Context) -> None:
    response = scenarios.select_one(admin, context)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[1]]
    assert response.headers["x-request-id"]


def test_login_create_user_list_users(token: str, admin: Caller, context: Context) -> None:
    assert token.count(".") == 2  # a JWT from the admin's login (the `token` fixture)
    users = scenarios.users(admin, context)
    assert users.created.status_code == 200, users.created.text
    assert "password" not in users.created.text
    for path in ("/api/users", "/api/auth/users"):
        listed = users.listings[path]
        assert listed.status_code == 200, listed.text
        assert users.name in [user["username"] for user in listed.json()["users"]]
    assert users.login.status_code == 200, users.login.text
    assert users.me is not None and users.me.status_code == 200 and users.name in users.me.text, users.me
    assert users.deleted.status_code == 200, users.deleted.text


def test_storage_signed_url_upload_then_download(run: Run, admin: Caller, context: Context) -> None:
    storage = scenarios.storage(admin, context)
    assert storage.bucket.status_code == 200, storage.bucket.text
    assert storage.put.status_code == 200, storage.put.text
    url = storage.put.json()["url"]
    # embedded: served by the edge itself; live: S3's own presigned URL, straight to the S3 server
    s3 = run.stack.env.get("MINIO_ENDPOINT", "").split("://")[-1].rstrip("/")
    where = s3 if run.mode == "live" else f"127.0.0.1:{EDGE_PORT}"
    assert urlsplit(url).netloc == where, url
    assert storage.tampered.status_code == 403  # the signature is really checked
    assert storage.uploaded.status_code == 200, storage.uploaded.text
    assert storage.get.status_code == 200, storage.get.text
    assert storage.downloaded.status_code == 200 and storage.downloaded.content == context.upload
    assert storage.deleted.status_code == 200, storage.deleted.text


def test_wpk_pack_sign_deploy_with_audit_entries(run: Run, admin: Caller, context: Context) -> None:
    wpk = scenarios.wpk(admin, context)
    assert wpk.packed.status_code == 200, wpk.packed.text
    assert wpk.unsigned.status_code == 400, wpk.unsigned.text  # deploy verifies the signature first

    assert wpk.signed.status_code == 200, wpk.signed.text
    assert wpk.signed.json()["signed"] is True
    assert wpk.signed.json()["key_source"] == ("vault" if run.mode == "live" else "embedded")
    assert wpk.deployed.status_code == 200, wpk.deployed.text
    deployment = wpk.deployed.json()["deployment"]
    assert deployment["status"] == "succeeded"
    assert wpk.listed.status_code == 200, wpk.listed.text
    assert deployment["deployment_id"] in [d["deployment_id"] for d in wpk.listed.json()["deployments"]]

    outcomes = [(e["action"].rsplit("/", 1)[-1], e["outcome"]) for e in wpk.events]
    for action in ("PackWpk", "SignArtifact", "DeployArtifact"):
        assert (action, "ok") in outcomes, outcomes
    assert all(e["actor"] == "admin" and e["tenant"] == "default" for e in wpk.events)
    assert verify_chain(context.audit_log).ok


def test_ws_realtime_subscribe_and_receive(run: Run, admin: Caller, context: Context) -> None:
    realtime = scenarios.realtime(admin, context)  # an error frame fails it
    assert realtime.subscribed["topic"] == "naksha.telemetry"
    assert realtime.heartbeat["topic"] == "naksha.telemetry"
    assert realtime.heartbeat["synthetic"] is True and realtime.heartbeat["message"]["kind"] == "heartbeat"

    assert realtime.published.status_code == 200, realtime.published.text
    assert realtime.received["message"] == {"mode": run.mode, "n": 1}
    assert int(realtime.received["offset"]) == int(realtime.published.json()["offset"])

    # Published over the socket: the echo and the "published" acknowledgement, in either order.
    assert realtime.echoed["message"] == {"n": 2}
    assert realtime.echoed["topic"] == realtime.acknowledged["topic"] == realtime.received["topic"]
    assert int(realtime.echoed["offset"]) == int(realtime.acknowledged["offset"])


@pytest.fixture(scope="module")
def orders(admin: Caller) -> int:
    """A small table in the admin's tenant for the AI to see; returns its row count."""
    made = scenarios.create_orders(admin)
    for response in made:
        assert response.status_code == 200, response.text
    assert len(made) == 2  # created, then filled
    return scenarios.ORDERS_COUNT


def test_ai_sql_suggestion(admin: Caller, context: Context, orders: int) -> None:
    response = scenarios.ai_suggest(admin, context)
    assert response.status_code == 200, response.text
    suggestions = response.json()["suggestions"]
    assert suggestions and all(s["sql"].strip() and s["source"] == "embedded" for s in suggestions)
    assert any("orders" in s["sql"].lower() for s in suggestions), suggestions


def test_ai_query_returns_sql_that_runs(admin: Caller, context: Context, orders: int) -> None:
    query = scenarios.ai_query(admin, context)
    assert query.answer.status_code == 200, query.answer.text
    answer = query.answer.json()
    assert answer["valid"] is True and answer["source"] == "embedded", answer
    assert "orders" in answer["tables"]
    assert query.ran is not None and query.ran.status_code == 200, query.ran
    assert query.ran.json()["rows"] == [[orders]]


def test_logs_query_finds_a_request_by_its_id(admin: Caller, context: Context) -> None:
    logs = scenarios.logs(admin, context)
    assert logs.failed_login.status_code == 401
    response = logs.login_lines  # both lines, the warning and the RPC's, waited for
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "embedded"  # no Loki in either run
    entries = response.json()["entries"]
    assert {(e["request_id"], e["service"]) for e in entries} == {(logs.login_id, "auth")}
    messages = sorted(e["message"] for e in entries)
    assert messages[0].startswith("/launchpad.auth.v1.AuthService/Login UNAUTHENTICATED ")  # the RPC's line
    assert messages[1:] == ["failed login"]
    # Every RPC leaves one line, in the caller's tenant: a query finds its own request.
    assert logs.query.status_code == 200
    found = logs.query_lines
    assert [(e["request_id"], e["level"]) for e in found.json()["entries"]] == [(logs.query_id, "info")]
    assert found.json()["entries"][0]["message"].startswith("/launchpad.data.v1.DataService/Query OK ")


def test_metrics_query(run: Run, admin: Caller, context: Context) -> None:
    """Embedded: synthetic series from the services' counters. Live: Prometheus, which CI has scrape the
    documented /metrics ports, so the auth service's counters arrive after a scrape or two."""
    assert context.scraped  # this stack is on the documented ports
    response = scenarios.metrics(admin, context)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["synthetic"] is (run.mode == "embedded")
    assert answer["data"]["resultType"] == "vector"
    result = answer["data"]["result"]
    assert result, f"no series for {scenarios.AUTH_SERIES} (does Prometheus scrape 127.0.0.1:9012?)"
    assert {r["metric"]["__name__"] for r in result} == {"launchpad_rpc_requests_total"}
    assert {r["metric"]["service"] for r in result} == {"auth"}
    assert sum(float(r["value"][1]) for r in result) >= 1


# Which test checks each of the scenarios `make report` runs.
TESTED_BY: dict[str, tuple[Callable[..., None], ...]] = {
    "health": (test_gateway_health_reports_the_modes,),
    "login": (test_login_create_user_list_users,),  # the admin's, in the `token` fixture it uses
    "select_one": (test_select_one_is_exactly_one,),
    "users": (test_login_create_user_list_users,),
    "storage": (test_storage_signed_url_upload_then_download,),
    "wpk": (test_wpk_pack_sign_deploy_with_audit_entries,),
    "realtime": (test_ws_realtime_subscribe_and_receive,),
    "ai": (test_ai_sql_suggestion, test_ai_query_returns_sql_that_runs),  # its parts, over `orders`
    "logs": (test_logs_query_finds_a_request_by_its_id,),
    "metrics": (test_metrics_query,),
}


def test_every_scenario_of_the_report_is_tested_here() -> None:
    assert set(TESTED_BY) == {scenario.name for scenario in SCENARIOS}
