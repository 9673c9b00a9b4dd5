"""Typed configuration from the environment, read once per process. Bad values fail loudly at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SERVICES: dict[str, int] = {
    "data": 8011,
    "auth": 8012,
    "storage": 8013,
    "deploy": 8014,
    "realtime": 8015,
    "metrics": 8016,
    "ai": 8017,
    "logs": 8018,
}
EDGE_PORT = 8001
METRICS_PORT_OFFSET = 1000


class ConfigError(ValueError):
    """A variable is set to something we cannot use."""


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _tristate(name: str) -> bool | None:
    raw = _env(name).lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true, false or auto, got {raw!r}")


def _list(name: str, default: str = "") -> tuple[str, ...]:
    return tuple(item.strip() for item in _env(name, default).split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service or the edge reads from the environment (see the README's table)."""

    service: str
    host: str
    port: int
    data_dir: Path
    log_dir: Path
    # None: auto (live when configured and answering, else embedded); True: embedded only; False: live only.
    simulation_mode: bool | None
    postgres_dsn: str
    redis_url: str
    jwt_issuer: str
    jwt_audience: str
    token_ttl_s: int
    admin_password: str
    jwt_key_path: Path | None
    tenant_db_secret: str
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    rate_limit_per_minute: int
    rate_limit_ip_per_minute: int
    login_attempts_per_minute: int
    query_timeout_ms: int
    query_max_rows: int
    query_max_bytes: int
    # Deploy's signing key sources, in order: Vault transit, a cosign key file, else a generated key.
    vault_addr: str = ""
    vault_token: str = ""
    vault_transit_key: str = "launchpad-wpk"
    cosign_key_path: Path | None = None
    cosign_password: str = ""
    runtime_agent_url: str = ""  # the runtime agent's base URL (POST /execute); unset: in-process agent
    kafka_url: str = ""  # realtime: Kafka bootstrap servers (host:port[,host:port]); unset: no Kafka
    realtime_history: int = 1000  # realtime: messages kept per tenant topic for offset recovery
    loki_url: str = ""  # LOKI_URL: the logs service queries Loki; unset: the services' own JSON logs
    prom_url: str = ""  # PROM_URL: the metrics proxy queries Prometheus; unset: synthetic series
    # AI: an OpenAI-compatible chat completions API when OPENAI_KEY is set; unset: the embedded generator.
    openai_key: str = field(default="", repr=False)  # never printed, logged or returned
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    ai_timeout_ms: int = 20000  # per language-model attempt (one retry)
    addresses: dict[str, str] = field(default_factory=dict)
    # The services that exist as servers: the edge's /health checks these (later issues add theirs).
    backends: tuple[str, ...] = ("data", "auth")
    # Object storage (DESIGN section 4): live S3 when MINIO_ENDPOINT is set, else a folder of buckets.
    minio_endpoint: str = ""
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_secure: bool = False
    max_upload_bytes: int = 100 * 1024 * 1024
    # The edge's address as clients see it: embedded signed URLs point there.
    public_url: str = "http://127.0.0.1:8001"
    storage_url_secret: str = ""
    internal_secret: str = ""  # LAUNCHPAD_INTERNAL_SECRET: see services/core/internal.py

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_PORT_OFFSET if self.port else 0

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"

    def address(self, service: str) -> str:
        return self.addresses[service]


def _default_port(service: str) -> int:
    if service == "edge":
        return EDGE_PORT
    return SERVICES[service]


def built_services() -> list[str]:
    """The services that exist as servers (services/<name>/__main__.py), in port order."""
    root = Path(__file__).resolve().parent.parent
    return [name for name in SERVICES if (root / name / "__main__.py").exists()]


def _minio_endpoint() -> tuple[str, bool]:
    """MINIO_ENDPOINT as host:port plus whether to use TLS: https:// means secure, http:// or none not."""
    raw = _env("MINIO_ENDPOINT")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return raw.rstrip("/"), False
    if scheme not in ("http", "https"):
        raise ConfigError(f"MINIO_ENDPOINT must be host:port or http(s)://host:port, got {raw!r}")
    return rest.rstrip("/"), scheme == "https"


def load_settings(service: str) -> Settings:
    """Reads the environment for `service` ("edge" or one of SERVICES)."""
    if service != "edge" and service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}")
    upper = service.upper()
    host = _env("LAUNCHPAD_HOST", "127.0.0.1")
    data_dir = Path(_env("LAUNCHPAD_DATA_DIR", ".launchpad")).resolve()
    addresses = {
        name: _env(
            f"LAUNCHPAD_{name.upper()}_ADDR", f"127.0.0.1:{_int(f'LAUNCHPAD_{name.upper()}_PORT', port)}"
        )
        for name, port in SERVICES.items()
    }
    minio_endpoint, minio_secure = _minio_endpoint()
    return Settings(
        service=service,
        host=host,
        port=_int(f"LAUNCHPAD_{upper}_PORT", _default_port(service)),
        data_dir=data_dir,
        log_dir=Path(_env("LAUNCHPAD_LOG_DIR", "reports/logs")).resolve(),
        simulation_mode=_tristate("SIMULATION_MODE"),
        postgres_dsn=_env("POSTGRES_DSN"),
        redis_url=_env("REDIS_URL"),
        jwt_issuer=_env("LAUNCHPAD_JWT_ISSUER", "launchpad-auth"),
        jwt_audience=_env("LAUNCHPAD_JWT_AUDIENCE", "launchpad"),
        token_ttl_s=_int("LAUNCHPAD_TOKEN_TTL_S", 3600),
        admin_password=_env("LAUNCHPAD_ADMIN_PASSWORD"),
        tenant_db_secret=_env("LAUNCHPAD_TENANT_DB_SECRET"),
        jwt_key_path=Path(_env("LAUNCHPAD_JWT_KEY_PATH")) if _env("LAUNCHPAD_JWT_KEY_PATH") else None,
        cors_origins=_list("LAUNCHPAD_CORS_ORIGINS", "http://localhost:3000,http://127.0.0.1:3000"),
        max_body_bytes=_int("LAUNCHPAD_MAX_BODY_BYTES", 2 * 1024 * 1024),
        rate_limit_per_minute=_int("LAUNCHPAD_RATE_LIMIT_PER_MINUTE", 6000),
        rate_limit_ip_per_minute=_int("LAUNCHPAD_RATE_LIMIT_IP_PER_MINUTE", 12000),
        login_attempts_per_minute=_int("LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE", 10),
        query_timeout_ms=_int("LAUNCHPAD_QUERY_TIMEOUT_MS", 30000),
        query_max_rows=_int("LAUNCHPAD_QUERY_MAX_ROWS", 10000),
        query_max_bytes=_int("LAUNCHPAD_QUERY_MAX_BYTES", 4 * 1024 * 1024),
        vault_addr=_env("VAULT_ADDR"),
        vault_token=_env("VAULT_TOKEN"),
        vault_transit_key=_env("VAULT_TRANSIT_KEY", "launchpad-wpk"),
        cosign_key_path=Path(_env("COSIGN_KEY_PATH")) if _env("COSIGN_KEY_PATH") else None,
        cosign_password=os.environ.get("COSIGN_PASSWORD", ""),  # not stripped: spaces may be part of it
        addresses=addresses,
        backends=_list("LAUNCHPAD_BACKENDS", ",".join(built_services())),
        runtime_agent_url=_env("RUNTIME_AGENT_URL"),
        kafka_url=_env("KAFKA_URL"),
        realtime_history=_int("LAUNCHPAD_REALTIME_HISTORY", 1000),
        loki_url=_env("LOKI_URL").rstrip("/"),
        prom_url=_env("PROM_URL").rstrip("/"),
        openai_key=_env("OPENAI_KEY"),
        openai_base_url=_env("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/"),
        openai_model=_env("OPENAI_MODEL", "gpt-4o-mini"),
        ai_timeout_ms=_int("LAUNCHPAD_AI_TIMEOUT_MS", 20000),
        minio_endpoint=minio_endpoint,
        minio_access_key=_env("MINIO_ACCESS_KEY"),
        minio_secret_key=_env("MINIO_SECRET_KEY"),
        minio_secure=minio_secure,
        max_upload_bytes=_int("LAUNCHPAD_MAX_UPLOAD_BYTES", 100 * 1024 * 1024),
        public_url=_env("LAUNCHPAD_PUBLIC_URL", "http://127.0.0.1:8001").rstrip("/"),
        storage_url_secret=_env("LAUNCHPAD_STORAGE_URL_SECRET"),
        internal_secret=_env("LAUNCHPAD_INTERNAL_SECRET"),
    )
