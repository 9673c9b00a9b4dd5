"""Faults, with the stack as separate processes over real HTTP (issue 6):

1. a backend process stops while the edge runs: its routes answer 503 naming it, /health says which one is
   down, the other routes keep working, and when it is started again on its port the edge recovers by itself;
   the same under supervision (as `make up` runs it): SIGKILL data while rows are written; the supervisor
   restarts it and every row acknowledged before, during and after the kill is there;
2. PostgreSQL or Redis goes away under a live run with SIMULATION_MODE=false: clear UNAVAILABLE (503), no
   data written anywhere else, and recovery when the server returns. The machine's shared servers are never
   touched: PostgreSQL is reached through a TCP proxy this test cuts and restores, Redis is a private
   redis-server this test stops and starts again;
3. the whole stack restarts on the embedded defaults with the same data dir: users, artifacts (packed and
   signed), deployments, tenant tables, tokens and the audit chain survive.

Ports 35000-35999 for gRPC, edges and servers; each service's /metrics (gRPC port + 1000) lands in 36xxx.
Waits poll a condition up to a generous bound; nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from services.core.audit import verify_chain
from services.launcher import ROOT, Stack
from tests.conftest import LIVE_ENV
from tests.integration.stacks import WAIT_S, eventually, stack_env
from tests.support import PrivateDatabase, live_required, need_env

PASSWORD = "faults-pw-1"
UNAVAILABLE = 14


@contextlib.contextmanager
def running(env: dict[str, str], services: list[str]) -> Iterator[Stack]:
    stack = Stack(env, services=services)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def stop_process(stack: Stack, name: str) -> None:
    """Stops one process of the stack the way an orchestrator would (SIGTERM, then SIGKILL)."""
    proc = stack.procs[name]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_process(stack: Stack, name: str) -> None:
    """Starts one service of the stack again, with the environment Stack.start gave it (same port)."""
    env = {**stack.env, "LAUNCHPAD_BACKENDS": ",".join(stack.services)}
    env["PYTHONPATH"] = f"{ROOT / 'generated'}:{ROOT}"
    stack.procs[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=ROOT)


def login(http: httpx.Client, username: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    response = http.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def health(http: httpx.Client) -> dict[str, Any]:
    return http.get("/health").json()


def select_one(http: httpx.Client, admin: dict[str, str]) -> httpx.Response:
    return http.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin)


def assert_unavailable(response: httpx.Response, *words: str) -> None:
    """A clear 503: the edge's JSON error with code UNAVAILABLE and a message naming what is down."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == UNAVAILABLE, body
    assert body["request_id"] and response.headers["x-request-id"] == body["request_id"]
    assert "Traceback" not in body["message"]
    for word in words:
        assert word.lower() in body["message"].lower(), body


# ------------------------------------------------------------------ 1. a backend process stops and returns


def test_a_stopped_backend_is_503_and_named_then_the_edge_recovers(tmp_path: Path) -> None:
    services = ["data", "auth"]
    with (
        running(stack_env(tmp_path / "data", 35000, PASSWORD, services), services) as stack,
        httpx.Client(base_url=stack.edge_url, timeout=30) as http,
    ):
        admin = login(http)
        assert select_one(http, admin).json()["rows"] == [[1]]

        stop_process(stack, "data")
        assert_unavailable(select_one(http, admin), "data service")
        report = eventually(lambda: http.get("/health"), lambda r: r.status_code == 503, "health while down")
        body = report.json()
        assert body["status"] == "degraded"
        assert body["services"]["data"]["status"] == "UNAVAILABLE"
        assert body["services"]["auth"]["status"] == "SERVING"
        # The other backend's routes keep working, writes included.
        assert http.get("/api/users", headers=admin).status_code == 200
        name = f"f{uuid.uuid4().hex[:8]}"
        created = http.post(
            "/api/users",
            json={"username": name, "password": "long-enough-pw", "roles": ["viewer"]},
            headers=admin,
        )
        assert created.status_code == 200, created.text
        login(http, name, "long-enough-pw")

        start_process(stack, "data")  # same port; the edge is not restarted
        recovered = eventually(
            lambda: select_one(http, admin), lambda r: r.status_code == 200, "query after restart"
        )
        assert recovered.json()["rows"] == [[1]]
        eventually(lambda: http.get("/health").status_code, lambda s: s == 200, "health after restart")


def test_a_killed_data_process_under_writes_is_restarted_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """Supervised (as `make up` runs it): SIGKILL data while a writer inserts rows one by one. Every insert
    answers 200 or a clean 503 while data is down; other services answer throughout; after the supervised
    restart every acknowledged row is there (unacknowledged ones may be too: the kill can land after the
    commit)."""
    from services.core.supervision import Policy

    services = ["data", "auth"]
    env = stack_env(tmp_path / "data", 35400, PASSWORD, services)
    stack = Stack(env, services=services, supervise=True, policy=Policy(initial_backoff_s=1.0))
    stack.start()
    table = f"acked_{uuid.uuid4().hex[:6]}"
    acknowledged: list[int] = []
    refused: list[httpx.Response] = []
    stop = threading.Event()
    try:
        with httpx.Client(base_url=stack.edge_url, timeout=30) as http:
            admin = login(http)
            created = http.post(
                "/api/data/query", json={"sql": f"CREATE TABLE {table} (id int)"}, headers=admin
            )
            assert created.status_code == 200, created.text

            def write() -> None:
                with httpx.Client(base_url=stack.edge_url, timeout=30) as writer:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        sql = f"INSERT INTO {table} VALUES ({n})"
                        response = writer.post("/api/data/query", json={"sql": sql}, headers=admin)
                        if response.status_code == 200:
                            acknowledged.append(n)
                        else:
                            refused.append(response)

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            eventually(lambda: len(acknowledged), lambda n: n >= 20, "rows written before the kill")
            victim = stack.procs["data"]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            eventually(lambda: len(refused), lambda n: n > 0, "an insert refused while data is down")
            assert http.get("/api/users", headers=admin).status_code == 200  # auth is not affected
            before = len(acknowledged)
            eventually(lambda: len(acknowledged), lambda n: n > before + 20, "writes after the restart")
            stop.set()
            writer.join(WAIT_S)

            # A clean 503 each; the ones sent while data was down name it (the one in flight at the kill may
            # carry gRPC's transport text instead).
            for response in refused:
                assert_unavailable(response)
            assert any("data service" in r.json()["message"] for r in refused)
            rows = http.post("/api/data/query", json={"sql": f"SELECT id FROM {table}"}, headers=admin)
            assert rows.status_code == 200, rows.text
            kept = {row[0] for row in rows.json()["rows"]}
            assert set(acknowledged) <= kept
            processes = health(http)["supervision"]["processes"]
            assert processes["data"]["restarts"] == 1 and processes["data"]["last_exit_code"] == -9
    finally:
        stop.set()
        stack.stop()


# ------------------------------------------------------------------ 2. PostgreSQL / Redis away under a live run


class TcpProxy:
    """127.0.0.1:port -> target, one pair of pump threads per connection. cut() closes the listener and
    every open connection (as a crashed server or a dropped network would); restore() listens again."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)  # accept() wakes up to notice cut()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut() ran meanwhile: this one must not survive it
                    client.close()
                    upstream.close()
                    continue
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def pg_through_proxy() -> Iterator[tuple[str, TcpProxy]]:
    """A private database on the live PostgreSQL (the suite's own platform database keeps its admin), reached
    through a TcpProxy on 127.0.0.1:35150."""
    dsn = LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN")
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        pytest.fail(f"POSTGRES_DSN must be a postgresql:// URL for this test, got scheme {parts.scheme!r}")
    database = PrivateDatabase(dsn)
    proxy = TcpProxy(35150, (parts.hostname, parts.port or 5432))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    try:
        proxy.restore()
        yield urlunsplit(parts._replace(netloc=netloc, path=f"/{database.name}")), proxy
    finally:
        proxy.cut()
        database.drop()


def files_under(folder: Path, *patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in folder.rglob(pattern))


def test_postgres_away_is_unavailable_with_nothing_written_elsewhere_then_recovers(
    tmp_path: Path, pg_through_proxy: tuple[str, TcpProxy]
) -> None:
    dsn, proxy = pg_through_proxy
    services = ["data", "auth"]
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, 35100, PASSWORD, services, POSTGRES_DSN=dsn, SIMULATION_MODE="false")
    with running(env, services) as stack, httpx.Client(base_url=stack.edge_url, timeout=30) as http:
        admin = login(http)
        table = f"faults_{uuid.uuid4().hex[:8]}"
        for sql in (f"CREATE TABLE {table} (id int)", f"INSERT INTO {table} VALUES (1)"):
            assert http.post("/api/data/query", json={"sql": sql}, headers=admin).status_code == 200
        assert not files_under(data_dir, "*.sqlite*", "*.db")  # live: no SQLite anywhere

        proxy.cut()
        ghost = f"ghost{uuid.uuid4().hex[:8]}"
        answers = {
            "query": select_one(http, admin),
            "insert": http.post("/api/data/query", json={"sql": f"INSERT INTO {table} VALUES (2)"}, headers=admin),
            "create user": http.post(
                "/api/users", json={"username": ghost, "password": "long-enough-pw", "roles": ["viewer"]},
                headers=admin,
            ),
            "login": http.post("/api/auth/login", json={"username": "admin", "password": PASSWORD}),
        }  # fmt: skip
        for what, response in answers.items():
            assert response.status_code == 503, (what, response.text)
            assert_unavailable(response, "postgresql")
        report = eventually(
            lambda: health(http),
            lambda r: all(r["services"][s]["status"] == "NOT_SERVING" for s in services),
            "health while PostgreSQL is away",
        )
        assert report["status"] == "degraded"
        for name in services:
            sql = next(d for d in report["services"][name]["dependencies"] if d["name"] == "sql")
            assert sql["mode"] == "live" and sql["healthy"] is False, sql
        # SIMULATION_MODE=false: nothing went to an embedded store instead.
        assert not files_under(data_dir, "*.sqlite*", "*.db")

        proxy.restore()
        eventually(
            lambda: select_one(http, admin).status_code, lambda s: s == 200, "query after PostgreSQL returned"
        )
        eventually(
            lambda: http.get("/health").status_code, lambda s: s == 200, "health after PostgreSQL returned"
        )
        rows = http.post(
            "/api/data/query", json={"sql": f"SELECT id FROM {table} ORDER BY id"}, headers=admin
        )
        assert rows.json()["rows"] == [[1]]  # the refused insert was not kept somewhere and replayed
        users = [u["username"] for u in http.get("/api/users", headers=admin).json()["users"]]
        assert ghost not in users
        assert not files_under(data_dir, "*.sqlite*", "*.db")
        http.post("/api/data/query", json={"sql": f"DROP TABLE {table}"}, headers=admin)


class PrivateRedis:
    """A redis-server of this test's own on 127.0.0.1:port, keeping nothing on disk; stop() and start()."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self._port_taken():  # else another server would answer our PINGs and take our place
            pytest.fail(f"127.0.0.1:{self.port} is taken: the private redis-server needs it")
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([binary, *args, "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        eventually(self._answers, bool, "private redis-server start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _port_taken(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not LIVE_ENV["REDIS_URL"]:
        need_env("REDIS_URL")  # runs in a live run, like the other Redis tests (it never uses that server)
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        if live_required():
            pytest.fail("redis-server is not installed but LAUNCHPAD_REQUIRE_LIVE=1")
        pytest.skip("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(35250, folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def publish(http: httpx.Client, admin: dict[str, str], topic: str, msg: Any) -> httpx.Response:
    return http.post("/api/realtime/publish", json={"topic": topic, "msg": msg}, headers=admin)


async def test_redis_away_is_unavailable_with_nothing_delivered_elsewhere_then_recovers(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    services = ["auth", "realtime"]
    env = stack_env(
        tmp_path / "data", 35200, PASSWORD, services, REDIS_URL=private_redis.url, SIMULATION_MODE="false"
    )
    stack = await asyncio.to_thread(Stack, env, services)
    await asyncio.to_thread(stack.start)
    try:
        with httpx.Client(base_url=stack.edge_url, timeout=30) as http:
            admin = login(http)
            url = (
                stack.edge_url.replace("http://", "ws://")
                + f"/ws/realtime?token={admin['Authorization'][7:]}"
            )
            topic = f"faults-{uuid.uuid4().hex[:8]}"

            async def subscribe(ws: Any, **options: Any) -> None:
                await ws.send(orjson.dumps({"subscribe": topic, **options}).decode())
                assert orjson.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "subscribed"

            async def frames(ws: Any, until: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = []
                while not got or not until(got[-1]):
                    got.append(orjson.loads(await asyncio.wait_for(ws.recv(), WAIT_S)))
                return got

            def messages(got: list[dict[str, Any]]) -> list[Any]:
                return [f["message"] for f in got if f["type"] == "message"]

            async with connect(url) as through:  # a subscriber that stays connected through the outage
                await subscribe(through)
                assert publish(http, admin, topic, {"n": 1}).status_code == 200
                first = await frames(through, lambda f: f["type"] == "message")
                assert messages(first) == [{"n": 1}]
                old_epoch = first[-1]["epoch"]

                await asyncio.to_thread(private_redis.stop)
                refused = await asyncio.to_thread(publish, http, admin, topic, {"n": 2})
                assert_unavailable(refused, "redis")
                report = await asyncio.to_thread(
                    eventually,
                    lambda: health(http),
                    lambda r: r["services"]["realtime"]["status"] == "NOT_SERVING",
                    "health while Redis is away",
                )
                redis_dep = next(
                    d for d in report["services"]["realtime"]["dependencies"] if d["name"] == "redis"
                )
                assert redis_dep["mode"] == "live" and redis_dep["healthy"] is False, redis_dep
                assert report["services"]["auth"]["status"] == "SERVING"

                await asyncio.to_thread(private_redis.start)  # same port, empty (it keeps nothing on disk)
                await asyncio.to_thread(
                    eventually, lambda: publish(http, admin, topic, {"n": 3}).status_code, lambda s: s == 200,
                    "publish after Redis returned",
                )  # fmt: skip
                await asyncio.to_thread(
                    eventually,
                    lambda: http.get("/health").status_code,
                    lambda s: s == 200,
                    "health after Redis returned",
                )
                assert publish(http, admin, topic, {"n": 4}).status_code == 200

                # The refused message went nowhere (no in-process broker took it): a new subscriber replaying
                # the topic from its start sees only what was published once Redis was back.
                async with connect(url) as after:
                    await subscribe(after, offset=0)
                    replayed = await frames(after, lambda f: f.get("message") == {"n": 4})
                    assert messages(replayed) == [{"n": 3}, {"n": 4}]
                    epoch = replayed[-1]["epoch"]

                # The subscriber that stayed connected is told that the topic's history was reset (Redis came
                # back empty: offsets start over) and closed 1013, with nothing delivered under its old epoch;
                # resubscribing with its old (epoch, offset) says recovered=false and starts at the new top.
                ended = await frames(through, lambda f: f["type"] == "error")
                assert messages(ended) == [], ended
                assert (
                    ended[-1]["error"]["code"] == "UNAVAILABLE" and "reset" in ended[-1]["error"]["message"]
                )
                await asyncio.wait_for(through.wait_closed(), WAIT_S)
                assert through.close_code == 1013
            async with connect(url) as again:
                await again.send(orjson.dumps({"subscribe": topic, "offset": 1, "epoch": old_epoch}).decode())
                subscribed = orjson.loads(await asyncio.wait_for(again.recv(), WAIT_S))
                assert subscribed["recovered"] is False and subscribed["epoch"] == epoch != old_epoch
                assert subscribed["offset"] == 2
    finally:
        await asyncio.to_thread(stack.stop)


# ------------------------------------------------------------------ 3. the whole stack restarts


def test_everything_survives_a_whole_stack_restart_on_embedded_defaults(tmp_path: Path) -> None:
    from services.core.config import built_services

    services = built_services()
    data_dir = tmp_path / "data"
    env = stack_env(data_dir, 35300, PASSWORD, services)
    name, table = f"r{uuid.uuid4().hex[:8]}", f"kept_{uuid.uuid4().hex[:6]}"
    wpk = {"name": "restart-me", "version": "1.0.0", "steps": [{"name": "run", "run": "true"}]}
    with running(env, services) as stack, httpx.Client(base_url=stack.edge_url, timeout=30) as http:
        admin = login(http)
        user = http.post(
            "/api/users",
            json={"username": name, "password": "long-enough-pw", "roles": ["developer"]},
            headers=admin,
        )
        assert user.status_code == 200, user.text
        for sql in (f"CREATE TABLE {table} (id int, note text)", f"INSERT INTO {table} VALUES (7, 'kept')"):
            assert http.post("/api/data/query", json={"sql": sql}, headers=admin).status_code == 200
        packed = http.post("/api/wpk/pack", json={"wpk": wpk}, headers=admin).json()
        signed = http.post("/api/wpk/sign", json={"artifact": packed["artifact_id"]}, headers=admin).json()
        assert signed["signed"] is True
        deployed = http.post("/api/wpk/deploy", json={"artifact_id": packed["artifact_id"]}, headers=admin)
        assert deployed.status_code == 200, deployed.text
        deployment_id = deployed.json()["deployment"]["deployment_id"]
    audit = data_dir / "audit.log"
    lines_before = audit.read_bytes().count(b"\n")

    with running(env, services) as stack, httpx.Client(base_url=stack.edge_url, timeout=30) as http:
        assert http.get("/api/users", headers=admin).status_code == 200  # a token of the first run verifies
        login(http, name, "long-enough-pw")
        rows = http.post("/api/data/query", json={"sql": f"SELECT id, note FROM {table}"}, headers=admin)
        assert rows.json()["rows"] == [[7, "kept"]]
        artifact = http.get(f"/api/wpk/artifacts/{packed['artifact_id']}", headers=admin)
        assert artifact.status_code == 200, artifact.text
        assert artifact.json()["artifact"]["sha256"] == packed["sha256"]
        deployments = http.get("/api/wpk/deployments", headers=admin).json()["deployments"]
        assert deployment_id in [d["deployment_id"] for d in deployments]
        # The embedded signing key survived too: the artifact signed before the restart still deploys.
        again = http.post("/api/wpk/deploy", json={"artifact_id": packed["artifact_id"]}, headers=admin)
        assert again.status_code == 200, again.text
        assert signed["key_id"] in [k["key_id"] for k in http.get("/api/wpk/keys").json()["keys"]]

    verdict = verify_chain(audit)
    assert verdict.ok, verdict
    assert audit.read_bytes().count(b"\n") > lines_before  # the second run appended to the same chain
    cli = subprocess.run(
        [sys.executable, "-m", "services.core.audit", "verify", str(audit)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT / 'generated'}:{ROOT}"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
