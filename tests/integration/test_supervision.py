"""`make up`'s supervision (split: a process per service), with real processes over real HTTP.

1. a service process is SIGKILLed: its routes answer 503 while the other services' routes answer 200, the
   supervisor restarts it after its backoff, the routes recover, and /health's "supervision" section shows
   one restart and the exit code;
2. a process that dies at every start (its port is taken) is given up on after the failed-start limit, with
   its last error in the output and in /health, while the rest of the stack keeps serving.

Ports: 36800 (edge 36801, gRPC 36811-36818, /metrics 37811-37818) and 36900 (36901, 36911-36918, 37911-37918).
Waits poll a condition up to a generous bound; nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.core.supervision import Policy
from services.launcher import Stack
from tests.integration.stacks import eventually, stack_env

PASSWORD = "supervision-pw-1"


@contextlib.contextmanager
def supervised(env: dict[str, str], services: list[str], policy: Policy) -> Iterator[Stack]:
    stack = Stack(env, services=services, supervise=True, policy=policy)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def login(http: httpx.Client) -> dict[str, str]:
    response = http.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def supervision(http: httpx.Client) -> dict[str, Any]:
    return http.get("/health").json()["supervision"]["processes"]


def settled(http: httpx.Client) -> dict[str, Any]:
    """The supervision section once /health (cached for a second) shows the start-up over."""
    return eventually(
        lambda: supervision(http),
        lambda p: all(x["state"] in ("running", "failed") for x in p.values()),
        "supervision after start-up",
    )


def logs_query(http: httpx.Client, admin: dict[str, str]) -> httpx.Response:
    return http.post("/api/logs/query", json={"query": '{service="auth"}', "limit": 1}, headers=admin)


def test_a_killed_service_is_503_alone_then_restarted_and_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = ["auth", "data", "logs"]
    # A backoff long enough that the down window is seen for sure; the default is 0.5 s.
    policy = Policy(initial_backoff_s=2.0)
    with (
        supervised(stack_env(tmp_path / "data", 36800, PASSWORD), services, policy) as stack,
        httpx.Client(base_url=stack.edge_url, timeout=30) as http,
    ):
        admin = login(http)
        assert logs_query(http, admin).status_code == 200
        processes = settled(http)
        assert set(processes) == {"auth", "data", "logs", "edge"}
        assert processes["logs"] == {
            "state": "running",
            "restarts": 0,
            "last_exit_code": None,
            "last_error": "",
        }
        victim = stack.procs["logs"]
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        down = logs_query(http, admin)
        assert down.status_code == 503, down.text
        assert "logs" in down.json()["message"].lower()
        # Only that service: the others answer, writes included.
        assert http.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin).json()["rows"] == [[1]]
        assert http.get("/api/users", headers=admin).status_code == 200
        login(http)

        eventually(lambda: logs_query(http, admin).status_code, lambda s: s == 200, "logs after restart")
        assert stack.procs["logs"].pid != victim.pid
        logs = eventually(
            lambda: supervision(http)["logs"], lambda p: p["state"] == "running", "supervision after restart"
        )
        assert logs["restarts"] == 1 and logs["last_exit_code"] == -9
        assert {p["restarts"] for name, p in supervision(http).items() if name != "logs"} == {0}
        eventually(lambda: http.get("/health").status_code, lambda s: s == 200, "health after restart")
        assert stack.supervisor is not None
        events = stack.supervisor.events
        assert events[0] == "logs exited with code -9; restarting in 2.0 s (restart 1)"
        assert events[1].startswith("logs is back (SERVING after ")
        assert len(events) == 2
    err = capsys.readouterr().err
    assert "launchpad: logs exited with code -9; restarting in 2.0 s (restart 1)\n" in err
    assert "launchpad: logs is back (SERVING after " in err


def test_a_process_that_dies_at_every_start_is_given_up_on_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = ["auth", "metrics"]
    env = stack_env(tmp_path / "data", 36900, PASSWORD)
    port = int(env["LAUNCHPAD_METRICS_PORT"])
    taken = socket.socket()
    taken.bind(
        ("127.0.0.1", port)
    )  # bound, not listening: the metrics service cannot bind, calls are refused
    policy = Policy(initial_backoff_s=0.2, start_failures_limit=3)
    try:
        with (
            supervised(env, services, policy) as stack,
            httpx.Client(base_url=stack.edge_url, timeout=30) as http,
        ):
            assert stack.failed() == ["metrics"]
            expected_error = f"metrics: cannot listen on 127.0.0.1:{port}: is it already running?"
            processes = settled(http)
            assert processes["metrics"] == {
                "state": "failed",
                "restarts": 2,
                "last_exit_code": 1,
                "last_error": expected_error,
            }
            assert processes["auth"]["state"] == processes["edge"]["state"] == "running"
            # The rest keeps serving; the failed service's routes are 503.
            admin = login(http)
            response = http.post("/api/metrics/query", json={"query": "up"}, headers=admin)
            assert response.status_code == 503, response.text
            with pytest.raises(RuntimeError, match="metrics failed: metrics: cannot listen"):
                stack.check_alive()
            # Not restarted again.
            gave_up_on = stack.procs["metrics"].pid
            time.sleep(3 * (policy.initial_backoff_s * 4))
            assert stack.procs["metrics"].pid == gave_up_on
            assert stack.supervisor is not None
            events = stack.supervisor.events
            assert [e.split(";")[1].strip() for e in events[:2]] == [
                "restarting in 0.2 s (restart 1)",
                "restarting in 0.4 s (restart 2)",
            ]
            assert events[2] == (
                f"metrics exited with code 1; giving up (3 failed starts in a row). Last error: {expected_error}"
            )
            assert len(events) == 3
            assert http.get("/health").json()["status"] == "degraded"
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.count("launchpad: metrics exited with code 1; giving up") == 1
    assert expected_error in err  # the process's own stderr, passed through too
