"""infra/Dockerfile, infra/compose.yaml and their configs. There is no Docker engine here, so these check
what can be checked without one: the files parse, reference each other consistently, set only variables
the code reads; the image's health check and start command are run for real."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.core.config import EDGE_PORT, METRICS_PORT_OFFSET, SERVICES
from tests.infra.conftest import IMAGE_VARIABLES, INFRA, ROOT, settings_from

COMPOSE = INFRA / "compose.yaml"
DOCKERFILE = INFRA / "Dockerfile"
PROCESSES = ("edge", *SERVICES)
# host of a URL or host:port value: scheme://[user:pw@]host:port or host:port[,host:port]
_HOST = re.compile(r"^(?:[a-z]+://)?(?:[^@/]*@)?([a-z][a-z0-9-]*):\d+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # also resolves the x-* anchors (<<: merge keys)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _final_stage() -> list[str]:
    lines = _dockerfile_lines()
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def test_compose_runs_every_process_from_the_one_dockerfile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PROCESSES:
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["args"] == {"SERVICE": name}
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
    launchpad = {n for n, s in services.items() if "build" in s}
    assert launchpad == set(PROCESSES)


def test_compose_has_the_live_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "minio", "redis", "kafka", "prometheus", "loki", "vault"):
        assert "image" in services[name], name
    assert "-dev" in services["vault"]["command"]


def test_compose_sets_only_variables_the_code_reads(
    compose: dict[str, Any], config_variables: frozenset[str]
) -> None:
    for name in PROCESSES:
        env = _environment(compose["services"][name])
        unknown = env.keys() - config_variables - IMAGE_VARIABLES
        assert unknown == set(), f"{name}: {sorted(unknown)}"


def test_compose_wires_processes_and_dependencies_by_service_name(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PROCESSES:
        env = _environment(services[name])
        assert env["SIMULATION_MODE"] == "false"
        assert env["LAUNCHPAD_BACKENDS"] == ",".join(SERVICES)
        for backend, port in SERVICES.items():
            assert env[f"LAUNCHPAD_{backend.upper()}_ADDR"] == f"{backend}:{port}"
        for variable, value in env.items():
            match = _HOST.match(value)
            if match and not variable.startswith("LAUNCHPAD_PUBLIC"):
                assert match.group(1) in services, f"{name}.{variable} names an unknown host {match.group(1)}"
        depends = services[name].get("depends_on", {})
        for target in depends:
            assert target in services, f"{name} depends on unknown {target}"
    realtime = _environment(services["realtime"])
    assert realtime["KAFKA_URL"] == "kafka:9092"
    assert _environment(services["edge"])["REDIS_URL"].startswith("redis://redis:")
    assert _environment(services["metrics"])["PROM_URL"] == "http://prometheus:9090"
    assert _environment(services["logs"])["LOKI_URL"] == "http://loki:3100"
    deploy = _environment(services["deploy"])
    assert deploy["VAULT_ADDR"] == "http://vault:8200"
    assert deploy["VAULT_TOKEN"] == _environment(services["vault"])["VAULT_DEV_ROOT_TOKEN_ID"]
    assert services["deploy"]["depends_on"]["vault-init"] == {"condition": "service_completed_successfully"}
    for name in ("storage", "deploy"):
        env = _environment(services[name])
        assert env["MINIO_ACCESS_KEY"] == _environment(services["minio"])["MINIO_ROOT_USER"]
        assert env["MINIO_SECRET_KEY"] == _environment(services["minio"])["MINIO_ROOT_PASSWORD"]


# ${NAME}, ${NAME:-default} (unset or empty) and ${NAME-default} (unset): the forms this file may use.
_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?-)([^}$]*))?\}")
AI_VARIABLES = ("OPENAI_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "LAUNCHPAD_AI_TIMEOUT_MS")


def _interpolate(value: str, user: dict[str, str]) -> str:
    """The value as `docker compose` hands it to the container when the user's environment is `user`."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match.groups()
        if name in user and (user[name] or op != ":-"):
            return user[name]
        return default or ""

    resolved = _VARIABLE.sub(one, value)
    assert "$" not in resolved, f"unexpected interpolation form in {value!r}"
    return resolved


def _container_env(service: dict[str, Any], user: dict[str, str]) -> dict[str, str]:
    return {name: _interpolate(value, user) for name, value in _environment(service).items()}


def test_compose_passes_the_language_model_settings_to_ai_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = _environment(services["ai"])
    assert set(AI_VARIABLES) <= env.keys()
    # The key is only ever the user's own variable: no literal, not even a default.
    assert re.fullmatch(r"\$\{OPENAI_KEY(:?-)?\}", env["OPENAI_KEY"]), env["OPENAI_KEY"]
    for name in PROCESSES:
        if name != "ai":
            assert not set(AI_VARIABLES) & _environment(services[name]).keys(), name
    assert services["ai"]["depends_on"]["data"] == {"condition": "service_started"}


def test_compose_ai_without_a_key_runs_the_embedded_generator_with_configs_defaults(
    compose: dict[str, Any],
) -> None:
    settings = settings_from(_container_env(compose["services"]["ai"], {}), "ai")
    defaults = settings_from({}, "ai")
    assert settings.ai.key.reveal() == ""  # the embedded generator answers
    assert (settings.ai.base_url, settings.ai.model, settings.ai.timeout_ms) == (
        defaults.ai.base_url,
        defaults.ai.model,
        defaults.ai.timeout_ms,
    )


def test_compose_ai_takes_the_key_and_model_from_the_users_environment(compose: dict[str, Any]) -> None:
    user = {
        "OPENAI_KEY": "ollama",
        "OPENAI_BASE_URL": "http://host.docker.internal:11434/v1",
        "OPENAI_MODEL": "llama3.1",
        "LAUNCHPAD_AI_TIMEOUT_MS": "60000",
    }
    settings = settings_from(_container_env(compose["services"]["ai"], user), "ai")
    assert (settings.ai.key.reveal(), settings.ai.base_url, settings.ai.model, settings.ai.timeout_ms) == (
        "ollama",
        "http://host.docker.internal:11434/v1",
        "llama3.1",
        60000,
    )
    # An empty variable in the user's environment still means the default, as for an unset one.
    empty = settings_from(_container_env(compose["services"]["ai"], {"OPENAI_MODEL": ""}), "ai")
    assert empty.ai.model == settings_from({}, "ai").ai.model


def test_compose_processes_share_one_data_volume(compose: dict[str, Any]) -> None:
    # The internal credential (LAUNCHPAD_INTERNAL_SECRET unset) is a file made once in the data dir: the
    # edge's Relay calls to realtime are accepted only because every process reads the same file.
    sources = set()
    for name in PROCESSES:
        env = _environment(compose["services"][name])
        assert "LAUNCHPAD_INTERNAL_SECRET" not in env, name
        mounts = dict(reversed(v.split(":")[:2]) for v in compose["services"][name]["volumes"])
        sources.add(mounts["/var/lib/launchpad"])
    assert sources == {"launchpad-data"}


def test_compose_volumes_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    for name in PROCESSES:
        mounts = {v.split(":")[1] for v in compose["services"][name]["volumes"]}
        assert {"/var/lib/launchpad", "/var/log/launchpad"} <= mounts


def test_compose_publishes_only_on_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
    assert "127.0.0.1:8001:8001" in compose["services"]["edge"]["ports"]


def test_prometheus_scrapes_every_process() -> None:
    config = yaml.safe_load((INFRA / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for name, port in SERVICES.items():
        assert jobs[name] == [f"{name}:{port + METRICS_PORT_OFFSET}"]
    assert jobs["edge"] == [f"edge:{EDGE_PORT}"]


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(INFRA / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_one_image_per_service_as_non_root() -> None:
    final = _final_stage()
    assert "ARG SERVICE" in final
    assert "ENV" in " ".join(final) and "LAUNCHPAD_SERVICE=${SERVICE}" in " ".join(final)
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    # The Helm chart runs pods as the same numeric user.
    values = yaml.safe_load((INFRA / "helm" / "launchpad" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    # Installed from pyproject.toml without the dev extra.
    installs = [line for line in _dockerfile_lines() if "pip install" in line]
    assert installs and all("[dev]" not in line for line in installs)


def test_dockerfile_sets_only_variables_the_code_reads(config_variables: frozenset[str]) -> None:
    names = set(re.findall(r"\b(LAUNCHPAD_[A-Z_]+|SIMULATION_MODE)=", " ".join(_final_stage())))
    assert names, "expected LAUNCHPAD_* defaults in the image"
    assert names - config_variables - IMAGE_VARIABLES == set()


def test_dockerfile_copies_only_what_dockerignore_lets_through() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copies = [line.split()[1:-1] for line in _dockerfile_lines() if line.upper().startswith("COPY ")]
    sources = [src.rstrip("/") for args in copies for src in args if not args[0].startswith("--from")]
    assert sources
    for source in sources:
        assert source in allowed, f"COPY {source} is excluded by .dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: no such path"


def _cmd() -> list[str]:
    (line,) = [line for line in _final_stage() if line.upper().startswith("CMD ")]
    return json.loads(line[4:])


@pytest.mark.parametrize(("service", "module"), [("edge", "edge"), ("data", "services.data")])
def test_image_command_starts_the_right_module(tmp_path: Path, service: str, module: str) -> None:
    # A stand-in `python` first on PATH records how the image's CMD would start the process.
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    result = subprocess.run(
        _cmd(),
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "LAUNCHPAD_SERVICE": service},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["-m", module]


# ---- the image's health check (infra/healthcheck.py), against real servers -----------------------------


def _healthcheck(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INFRA / "healthcheck.py")],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{ROOT / 'generated'}:{ROOT}",
            "LAUNCHPAD_DATA_DIR": str(tmp_path / "data"),
            "LAUNCHPAD_LOG_DIR": str(tmp_path / "logs"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def test_healthcheck_follows_grpc_health(health_server: tuple[int, Any], tmp_path: Path) -> None:
    port, servicer = health_server
    env = {"LAUNCHPAD_SERVICE": "logs", "LAUNCHPAD_LOGS_PORT": str(port)}
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _healthcheck(env, tmp_path).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = _healthcheck(env, tmp_path)
    assert result.returncode == 1 and "not healthy" in result.stderr


def test_healthcheck_fails_when_nothing_listens_or_service_unknown(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
        port = str(held.getsockname()[1])
        assert (
            _healthcheck({"LAUNCHPAD_SERVICE": "data", "LAUNCHPAD_DATA_PORT": port}, tmp_path).returncode == 1
        )
    result = _healthcheck({"LAUNCHPAD_SERVICE": "nope"}, tmp_path)
    assert result.returncode == 1 and "unknown service" in result.stderr


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_healthcheck_of_the_edge_uses_metrics_not_health(tmp_path: Path) -> None:
    # The stand-in answers 503 on every path but /metrics, as the edge's /health does while a backend is down.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"LAUNCHPAD_SERVICE": "edge", "LAUNCHPAD_EDGE_PORT": str(server.server_address[1])}
        assert _healthcheck(env, tmp_path).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _healthcheck(env, tmp_path).returncode == 1
