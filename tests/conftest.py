"""Fixtures for every test layer. Each test gets its own data dir and log dir; nothing touches ./.launchpad."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import need_env

# Variables that point a process at a real server or a key: stripped for hermetic runs (fixtures, stacks).
ISOLATED = (
    "SIMULATION_MODE",
    "POSTGRES_DSN",
    "REDIS_URL",
    "LAUNCHPAD_ADMIN_PASSWORD",
    "LAUNCHPAD_JWT_KEY_PATH",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "COSIGN_KEY_PATH",
    "COSIGN_PASSWORD",
    "RUNTIME_AGENT_URL",
    "KAFKA_URL",
    "LOKI_URL",
    "PROM_URL",
    "OPENAI_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "LAUNCHPAD_TOPOLOGY",  # the stack fixtures choose theirs
)
# The real servers CI configured, read before any test isolates the environment.
LIVE_ENV = {
    name: os.environ.get(name, "")
    for name in (
        "POSTGRES_DSN",
        "REDIS_URL",
        "MINIO_ENDPOINT",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "PROM_URL",
        "KAFKA_URL",
    )
}


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated environment: embedded defaults, data and logs under tmp_path. Returns the data dir."""
    for name in ISOLATED:
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("LAUNCHPAD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LAUNCHPAD_LOG_DIR", str(tmp_path / "logs"))
    return data_dir


@pytest.fixture
def pg_dsn(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real PostgreSQL DSN (POSTGRES_DSN), set in the isolated environment; skips when unset."""
    dsn = LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN")
    monkeypatch.setenv("POSTGRES_DSN", dsn)
    return dsn


@pytest.fixture
def redis_url() -> str:
    """A real Redis URL (REDIS_URL); skips when unset, fails under LAUNCHPAD_REQUIRE_LIVE=1."""
    return LIVE_ENV["REDIS_URL"] or need_env("REDIS_URL")


@pytest.fixture
def s3_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real S3 endpoint (MINIO_ENDPOINT and keys), set in the isolated environment; skips when unset."""
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.setenv(name, LIVE_ENV[name] or need_env(name))
    return LIVE_ENV["MINIO_ENDPOINT"]
