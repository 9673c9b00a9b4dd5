"""services/core/config.py: grouped settings, the defaults the README states, loud failures, secrets that never print."""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import os
import pickle
import pprint
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest

from services.core import config
from services.core.config import SERVICES, ConfigError, Secret, SecretUrl, Settings, load_settings
from services.core.deps import Mode, Registry
from services.core.jsonlog import JsonFormatter

README = Path(__file__).resolve().parents[2] / "README.md"
PG_PASSWORD = "pg-pass-4b1d9e"
REDIS_PASSWORD = "redis-pass-77c0a2"
# Every secret variable with a value that appears nowhere else, so any leak of it is found by substring.
SECRET_ENV = {
    "POSTGRES_DSN": f"postgresql://lp_owner:{PG_PASSWORD}@db.internal:5432/launchpad",
    "REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0",
    "LAUNCHPAD_TENANT_DB_SECRET": "tenant-db-secret-0d6f31",
    "LAUNCHPAD_ADMIN_PASSWORD": "admin-password-5e8c44",
    "VAULT_TOKEN": "vault-token-a93b07",
    "COSIGN_PASSWORD": "cosign-password-12fe5d",
    "MINIO_SECRET_KEY": "minio-secret-key-c4a790",
    "LAUNCHPAD_STORAGE_URL_SECRET": "storage-url-secret-6b2e18",
    "OPENAI_KEY": "sk-openai-key-3f9d20",
    "LAUNCHPAD_INTERNAL_SECRET": "internal-secret-8a51cf",
}
LEAKS = [
    PG_PASSWORD,
    REDIS_PASSWORD,
    *(v for k, v in SECRET_ENV.items() if k not in ("POSTGRES_DSN", "REDIS_URL")),
]


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    """An environment holding only what the test puts there (nothing of the real one is seen)."""
    with mock.patch.dict(os.environ, {}, clear=True):
        yield os.environ  # type: ignore[misc]


def _groups(settings: Settings) -> list[Any]:
    return [getattr(settings, f.name) for f in dataclasses.fields(settings)]


def _env_fields(settings: Settings) -> Iterator[tuple[str, Any]]:
    """(variable, value read from it) for every field read from one variable."""
    for group in _groups(settings):
        for f in dataclasses.fields(group):
            if "env" in f.metadata:
                yield f.metadata["env"], getattr(group, f.name)


def _json_log(settings: Settings) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("edge"))
    log = logging.getLogger("launchpad.test_config")
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        log.warning("settings %s / %r", settings, settings, extra={"settings": settings, "ai": settings.ai})
        try:
            raise RuntimeError(settings)
        except RuntimeError:
            log.exception("with %s", settings.postgres)
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    return stream.getvalue()


def _shown(settings: Settings) -> dict[str, str]:
    return {
        "repr": repr(settings),
        "str": str(settings),
        "f-string": f"{settings}",
        "%-format": "%s %r" % (settings, settings),  # noqa: UP031 -- how logging formats arguments
        "groups": " ".join(f"{group!r} {group!s}" for group in _groups(settings)),
        "fields": " ".join(f"{value!r} {value!s} {value}" for _, value in _env_fields(settings)),
        "pprint": pprint.pformat(settings),
        "json log": _json_log(settings),
        "orjson": orjson.dumps(settings, default=str).decode(),
    }


def test_no_secret_value_prints_anywhere_the_settings_are_shown(clean_env: dict[str, str]) -> None:
    clean_env.update(SECRET_ENV)
    settings = load_settings("edge")
    for where, text in _shown(settings).items():
        for value in LEAKS:
            assert value not in text, f"{value} printed by {where}"
    assert "postgresql://lp_owner:***@db.internal:5432/launchpad" in repr(settings)
    assert "redis://:***@cache.internal:6379/0" in repr(settings)


def test_revealed_urls_registered_as_dependencies_show_no_password(clean_env: dict[str, str]) -> None:
    """Services register the raw DSN and Redis URL as dependency targets, which /health shows."""
    clean_env.update(SECRET_ENV)
    settings = load_settings("data")
    deps = Registry()
    deps.add("sql", Mode.LIVE, settings.postgres.dsn.reveal())
    deps.add("redis", Mode.LIVE, settings.redis.url.reveal())
    shown = repr(deps.all())
    assert "db.internal:5432/launchpad" in shown and "cache.internal:6379" in shown
    for value in LEAKS:
        assert value not in shown


def test_every_secret_variable_is_a_secret_holding_the_raw_value(clean_env: dict[str, str]) -> None:
    clean_env.update(SECRET_ENV)
    read = dict(_env_fields(load_settings("edge")))
    secrets = {name for name, value in read.items() if isinstance(value, Secret)}
    assert secrets == SECRET_ENV.keys()
    for name, raw in SECRET_ENV.items():
        assert read[name].reveal() == raw
    assert isinstance(read["POSTGRES_DSN"], SecretUrl) and isinstance(read["REDIS_URL"], SecretUrl)


def test_secret_masks_every_rendering_and_reveals_on_request() -> None:
    secret = Secret("hunter2")
    assert (repr(secret), str(secret), f"{secret}", f"{secret!r}") == (
        "Secret('***')",
        "***",
        "***",
        "Secret('***')",
    )
    assert secret.reveal() == "hunter2"
    assert (repr(Secret()), str(Secret()), bool(Secret()), bool(secret)) == ("Secret('')", "", False, True)
    assert secret == Secret("hunter2") and secret != Secret("other") and secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))
    assert copy.copy(secret) is secret and copy.deepcopy(secret) is secret
    assert pickle.loads(pickle.dumps(secret)) == secret
    with pytest.raises(AttributeError):
        secret._value = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql://u:pw@db/x?sslpassword=pw2", "postgresql://u:***@db/x?***"),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://u:pw@[::1]:5432/x", "postgresql://u:***@[::1]:5432/x"),
        ("https://ghp_token@git.example/x", "https://***@git.example/x"),
        ("host=db user=u password=pw", "***"),  # key=value DSN: nothing of it is shown
        ("postgresql://u:pw@db:notaport/x", "***"),
        ("", ""),
    ],
)
def test_secret_url_shows_everything_but_the_password(url: str, shown: str) -> None:
    assert str(SecretUrl(url)) == shown
    assert repr(SecretUrl(url)) == f"SecretUrl({shown!r})"
    assert SecretUrl(url).reveal() == url


def _readme_row(key: str) -> str:
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| {key}")]
    assert len(rows) == 1, f"README's configuration table has no single row for {key}"
    return rows[0]


def _defaults(s: Settings) -> dict[str, tuple[Any, Any, str, str]]:
    """variable -> (value read, the README's default as a value, README row key, the README's words)."""
    ports = {name: f"127.0.0.1:{port}" for name, port in SERVICES.items()}
    return {
        "SIMULATION_MODE": (s.process.simulation_mode, None, "`SIMULATION_MODE`", "| auto |"),
        "POSTGRES_DSN": (s.postgres.dsn, Secret(), "`POSTGRES_DSN`", "| unset:"),
        "REDIS_URL": (s.redis.url, Secret(), "`REDIS_URL`", "| unset:"),
        "MINIO_ACCESS_KEY": (s.storage.access_key, "", "`MINIO_ENDPOINT`, `MINIO_ACCESS_KEY`", "| unset:"),
        "MINIO_SECRET_KEY": (
            s.storage.secret_key,
            Secret(),
            "`MINIO_ENDPOINT`, `MINIO_ACCESS_KEY`",
            "| unset:",
        ),
        "LAUNCHPAD_MAX_UPLOAD_BYTES": (
            s.storage.max_upload_bytes,
            104857600,
            "`LAUNCHPAD_MAX_UPLOAD_BYTES`",
            "104857600",
        ),
        "LAUNCHPAD_PUBLIC_URL": (
            s.edge.public_url,
            "http://127.0.0.1:8001",
            "`LAUNCHPAD_PUBLIC_URL`",
            "`http://127.0.0.1:8001`",
        ),
        "LAUNCHPAD_STORAGE_URL_SECRET": (
            s.storage.url_secret,
            Secret(),
            "`LAUNCHPAD_STORAGE_URL_SECRET`",
            "generated",
        ),
        "LAUNCHPAD_INTERNAL_SECRET": (
            s.peers.internal_secret,
            Secret(),
            "`LAUNCHPAD_INTERNAL_SECRET`",
            "generated",
        ),
        "VAULT_ADDR": (
            s.signing.vault_addr,
            "",
            "`VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_TRANSIT_KEY`",
            "| unset /",
        ),
        "VAULT_TOKEN": (
            s.signing.vault_token,
            Secret(),
            "`VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_TRANSIT_KEY`",
            "/ unset /",
        ),
        "VAULT_TRANSIT_KEY": (
            s.signing.vault_transit_key,
            "launchpad-wpk",
            "`VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_TRANSIT_KEY`",
            "`launchpad-wpk`",
        ),
        "COSIGN_KEY_PATH": (
            s.signing.cosign_key_path,
            None,
            "`COSIGN_KEY_PATH`, `COSIGN_PASSWORD`",
            "| unset |",
        ),
        "COSIGN_PASSWORD": (
            s.signing.cosign_password,
            Secret(),
            "`COSIGN_KEY_PATH`, `COSIGN_PASSWORD`",
            "| unset |",
        ),
        "RUNTIME_AGENT_URL": (s.peers.runtime_agent_url, "", "`RUNTIME_AGENT_URL`", "| unset:"),
        "KAFKA_URL": (s.realtime.kafka_url, "", "`KAFKA_URL`", "| unset:"),
        "LAUNCHPAD_REALTIME_HISTORY": (s.realtime.history, 1000, "`LAUNCHPAD_REALTIME_HISTORY`", "| 1000 |"),
        "LOKI_URL": (s.telemetry.loki_url, "", "`LOKI_URL`", "| unset:"),
        "PROM_URL": (s.telemetry.prom_url, "", "`PROM_URL`", "| unset:"),
        "OPENAI_KEY": (s.ai.key, Secret(), "`OPENAI_KEY`", "| unset:"),
        "OPENAI_BASE_URL": (
            s.ai.base_url,
            "https://api.openai.com/v1",
            "`OPENAI_BASE_URL` / `OPENAI_MODEL`",
            "`https://api.openai.com/v1` /",
        ),
        "OPENAI_MODEL": (s.ai.model, "gpt-4o-mini", "`OPENAI_BASE_URL` / `OPENAI_MODEL`", "/ `gpt-4o-mini`"),
        "LAUNCHPAD_AI_TIMEOUT_MS": (s.ai.timeout_ms, 20000, "`LAUNCHPAD_AI_TIMEOUT_MS`", "| 20000 |"),
        "LAUNCHPAD_DATA_DIR": (
            s.process.data_dir,
            Path(".launchpad").resolve(),
            "`LAUNCHPAD_DATA_DIR`",
            "`./.launchpad`",
        ),
        "LAUNCHPAD_LOG_DIR": (
            s.process.log_dir,
            Path("reports/logs").resolve(),
            "`LAUNCHPAD_LOG_DIR`",
            "`./reports/logs`",
        ),
        "LAUNCHPAD_HOST": (s.process.host, "127.0.0.1", "`LAUNCHPAD_HOST`", "`127.0.0.1`"),
        "LAUNCHPAD_TOPOLOGY": (
            s.process.topology,
            "split",
            "`LAUNCHPAD_TOPOLOGY`",
            "| `split` (`make up`: `single`) |",
        ),
        "LAUNCHPAD_<SVC>_ADDR": (
            dict(s.peers.addresses),
            ports,
            "`LAUNCHPAD_<SVC>_ADDR`",
            "`127.0.0.1:<port>`",
        ),
        "LAUNCHPAD_BACKENDS": (
            s.peers.backends,
            tuple(config.built_services()),
            "`LAUNCHPAD_BACKENDS`",
            "the built services",
        ),
        "LAUNCHPAD_ADMIN_PASSWORD": (
            s.auth.admin_password,
            Secret(),
            "`LAUNCHPAD_ADMIN_PASSWORD`",
            "generated once",
        ),
        "LAUNCHPAD_JWT_ISSUER": (
            s.auth.issuer,
            "launchpad-auth",
            "`LAUNCHPAD_JWT_ISSUER` / `_AUDIENCE`",
            "`launchpad-auth` /",
        ),
        "LAUNCHPAD_JWT_AUDIENCE": (
            s.auth.audience,
            "launchpad",
            "`LAUNCHPAD_JWT_ISSUER` / `_AUDIENCE`",
            "/ `launchpad` |",
        ),
        "LAUNCHPAD_JWT_KEY_PATH": (
            s.auth.key_path,
            None,
            "`LAUNCHPAD_JWT_KEY_PATH`",
            "`<data dir>/auth/jwt-signing-key.pem`",
        ),
        "LAUNCHPAD_TOKEN_TTL_S": (s.auth.token_ttl_s, 3600, "`LAUNCHPAD_TOKEN_TTL_S`", "| 3600 |"),
        "LAUNCHPAD_CORS_ORIGINS": (
            s.edge.cors_origins,
            ("http://localhost:3000", "http://127.0.0.1:3000"),
            "`LAUNCHPAD_CORS_ORIGINS`",
            "`http://localhost:3000,http://127.0.0.1:3000`",
        ),
        "LAUNCHPAD_MAX_BODY_BYTES": (
            s.edge.max_body_bytes,
            2097152,
            "`LAUNCHPAD_MAX_BODY_BYTES`",
            "| 2097152 |",
        ),
        "LAUNCHPAD_RATE_LIMIT_PER_MINUTE": (
            s.edge.rate_limit_per_minute,
            6000,
            "`LAUNCHPAD_RATE_LIMIT_PER_MINUTE` / `_IP_PER_MINUTE`",
            "| 6000 /",
        ),
        "LAUNCHPAD_RATE_LIMIT_IP_PER_MINUTE": (
            s.edge.rate_limit_ip_per_minute,
            12000,
            "`LAUNCHPAD_RATE_LIMIT_PER_MINUTE` / `_IP_PER_MINUTE`",
            "/ 12000 |",
        ),
        "LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE": (
            s.auth.login_attempts_per_minute,
            10,
            "`LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE`",
            "| 10 |",
        ),
        "LAUNCHPAD_QUERY_TIMEOUT_MS": (
            s.query.timeout_ms,
            30000,
            "`LAUNCHPAD_QUERY_TIMEOUT_MS` / `_MAX_ROWS`",
            "| 30000 /",
        ),
        "LAUNCHPAD_QUERY_MAX_ROWS": (
            s.query.max_rows,
            10000,
            "`LAUNCHPAD_QUERY_TIMEOUT_MS` / `_MAX_ROWS`",
            "/ 10000 |",
        ),
        "LAUNCHPAD_TENANT_DB_SECRET": (
            s.postgres.tenant_secret,
            Secret(),
            "`LAUNCHPAD_TENANT_DB_SECRET`",
            "generated",
        ),
    }


def test_each_default_is_the_one_the_readme_states(clean_env: dict[str, str]) -> None:
    settings = load_settings("data")
    for name, (value, expected, row, words) in _defaults(settings).items():
        assert value == expected, name
        assert words in _readme_row(row), f"README's default for {name} is no longer {words!r}"
    # Not in the README's table: the byte budget of a query result.
    assert settings.query.max_bytes == 4 * 1024 * 1024
    assert (settings.storage.endpoint, settings.storage.secure) == ("", False)


def test_every_variable_read_has_its_default_checked(clean_env: dict[str, str]) -> None:
    read = {name for name, _ in _env_fields(load_settings("edge"))}
    assert read - _defaults(load_settings("edge")).keys() == {"LAUNCHPAD_QUERY_MAX_BYTES"}


def test_ports_default_per_process_and_metrics_sit_1000_above(clean_env: dict[str, str]) -> None:
    row = _readme_row("`LAUNCHPAD_<SVC>_PORT`")
    assert "edge 8001, data 8011 ... logs 8018" in row and "port + 1000" in row
    assert load_settings("edge").process.port == 8001
    for name, port in SERVICES.items():
        process = load_settings(name).process
        assert (process.service, process.port, process.metrics_port) == (name, port, port + 1000)
    clean_env["LAUNCHPAD_AUTH_PORT"] = "9012"
    settings = load_settings("auth")
    assert (settings.process.port, settings.peers.address("auth")) == (9012, "127.0.0.1:9012")
    assert settings.process.audit_path == settings.process.data_dir / "audit.log"


def test_values_are_parsed_as_documented(clean_env: dict[str, str]) -> None:
    clean_env.update(
        {
            "COSIGN_PASSWORD": " spaced ",  # kept whole: spaces may be part of it
            "OPENAI_BASE_URL": "http://ollama:11434/v1/",
            "LAUNCHPAD_PUBLIC_URL": " https://edge.example/ ",
            "LOKI_URL": "http://loki:3100/",
            "LAUNCHPAD_CORS_ORIGINS": " https://a.example , ,https://b.example",
            "LAUNCHPAD_BACKENDS": "data,auth",
            "LAUNCHPAD_DATA_ADDR": "data.svc:50051",
            "MINIO_ENDPOINT": "https://s3.example:9000/",
            "LAUNCHPAD_JWT_KEY_PATH": "/keys/jwt.pem",
            "SIMULATION_MODE": "off",
            "VAULT_TOKEN": "  tok  ",
        }
    )
    s = load_settings("edge")
    assert s.signing.cosign_password.reveal() == " spaced "
    assert s.signing.vault_token.reveal() == "tok"
    assert (s.ai.base_url, s.edge.public_url, s.telemetry.loki_url) == (
        "http://ollama:11434/v1",
        "https://edge.example",
        "http://loki:3100",
    )
    assert s.edge.cors_origins == ("https://a.example", "https://b.example")
    assert (s.peers.backends, s.peers.address("data")) == (("data", "auth"), "data.svc:50051")
    assert (s.storage.endpoint, s.storage.secure) == ("s3.example:9000", True)
    assert s.auth.key_path == Path("/keys/jwt.pem")
    assert s.process.simulation_mode is False
    clean_env["LAUNCHPAD_CORS_ORIGINS"] = ""
    assert load_settings("edge").edge.cors_origins == ()  # set but empty: no origins, not the default


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LAUNCHPAD_TOKEN_TTL_S", "soon", "LAUNCHPAD_TOKEN_TTL_S must be an integer, got 'soon'"),
        ("LAUNCHPAD_EDGE_PORT", "80a", "LAUNCHPAD_EDGE_PORT must be an integer"),
        ("LAUNCHPAD_DATA_PORT", "x", "LAUNCHPAD_DATA_PORT must be an integer"),
        ("LAUNCHPAD_QUERY_MAX_BYTES", "4MiB", "LAUNCHPAD_QUERY_MAX_BYTES must be an integer"),
        ("LAUNCHPAD_AI_TIMEOUT_MS", "1.5", "LAUNCHPAD_AI_TIMEOUT_MS must be an integer"),
        ("SIMULATION_MODE", "maybe", "SIMULATION_MODE must be true, false or auto, got 'maybe'"),
        ("MINIO_ENDPOINT", "ftp://s3:21", "MINIO_ENDPOINT must be host:port or http(s)://host:port"),
        ("LAUNCHPAD_TOPOLOGY", "mono", "LAUNCHPAD_TOPOLOGY must be split or single, got 'mono'"),
    ],
)
def test_bad_values_fail_loudly(clean_env: dict[str, str], name: str, value: str, message: str) -> None:
    clean_env[name] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings("edge")


def test_an_unknown_service_fails_loudly(clean_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="unknown service 'nope'"):
        load_settings("nope")


def test_settings_and_their_groups_are_frozen(clean_env: dict[str, str]) -> None:
    settings = load_settings("edge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ai = settings.ai  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ai.model = "other"  # type: ignore[misc]
