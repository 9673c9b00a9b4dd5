"""Typed configuration from the environment, read once per process. Bad values fail loudly at start-up.

Each group below is one concern; a field read from a variable names it with `env(...)`, and its default is
written there only (the README's configuration table lists the same variables and defaults).
"""

# ruff: noqa: RUF009 -- env(...) in a dataclass default is a dataclasses.field (metadata), not a shared value

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
TOPOLOGIES = ("split", "single")
METRICS_PORT_OFFSET = 1000
MASK = "***"

G = TypeVar("G")


class ConfigError(ValueError):
    """A variable is set to something we cannot use."""


class Secret:
    """A credential that prints as *** wherever settings are shown or logged; `reveal()` is the raw value.

    Falsy when empty, so `if settings.ai.key:` means "is it set". Immutable, hashable, and equal only to a
    Secret with the same value (a plain string never compares equal, so no test or check leaks by accident).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def shown(self) -> str:
        """What repr and str show: the mask when set, "" when not (whether it is set is not a secret)."""
        return MASK if self._value else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown()!r})"

    def __str__(self) -> str:
        return self.shown()

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return type(self), (self._value,)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


class SecretUrl(Secret):
    """A URL or DSN that may hold a password: shown with only the password (and any query) masked."""

    __slots__ = ()

    def shown(self) -> str:
        if not self._value:
            return ""
        try:
            parts = urlsplit(self._value)
            port = parts.port
        except ValueError:
            return MASK
        if not parts.scheme or not parts.netloc:
            return MASK  # a key=value DSN may carry password=... anywhere
        user = parts.username or ""
        if parts.password is not None:
            user += f":{MASK}"
        elif user and parts.scheme in ("http", "https"):
            user = MASK  # over HTTP a lone userinfo is a token (https://<token>@host), not a user name
        user += "@" if user else ""
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
        netloc = f"{user}{host}{f':{port}' if port is not None else ''}"
        query = f"?{MASK}" if parts.query else ""
        return f"{parts.scheme}://{netloc}{parts.path}{query}"


Reader = Callable[[str, Any], Any]


def _text(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _url(name: str, default: str) -> str:
    return _text(name, default).rstrip("/")


def _int(name: str, default: int) -> int:
    raw = _text(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _tristate(name: str, default: bool | None) -> bool | None:
    raw = _text(name, "").lower()
    if raw in ("", "auto"):
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true, false or auto, got {raw!r}")


def _names(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _choice(*allowed: str) -> Reader:
    """A reader accepting only `allowed` (case-insensitive); anything else names the allowed values."""

    def read(name: str, default: str) -> str:
        raw = _text(name, "").lower() or default
        if raw not in allowed:
            raise ConfigError(f"{name} must be {' or '.join(allowed)}, got {raw!r}")
        return raw

    return read


def _dir(name: str, default: Path) -> Path:
    return Path(_text(name, str(default))).resolve()


def _optional_path(name: str, default: Path | None) -> Path | None:
    raw = _text(name, "")
    return Path(raw) if raw else default


def _secret(name: str, default: Secret) -> Secret:
    return Secret(_text(name, default.reveal()))


def _secret_url(name: str, default: SecretUrl) -> SecretUrl:
    return SecretUrl(_text(name, default.reveal()))


def _password(name: str, default: Secret) -> Secret:
    return Secret(os.environ.get(name, default.reveal()))  # not stripped: spaces may be part of it


def env(name: str, default: Any, read: Reader = _text) -> Any:
    """A field read from the variable `name` by `read`, `default` when unset."""
    return field(default=default, metadata={"env": name, "read": read})


def _read(group: type[G], **given: Any) -> G:
    """`group` from the environment: every `env(...)` field read, the others taken from `given`."""
    values = {
        f.name: f.metadata["read"](f.metadata["env"], f.default) for f in fields(group) if "env" in f.metadata
    }
    return group(**values, **given)


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """Which process this is, where it listens and where it keeps its files."""

    service: str  # "edge" or one of SERVICES
    port: int  # LAUNCHPAD_<SVC>_PORT, default from SERVICES / EDGE_PORT
    host: str = env("LAUNCHPAD_HOST", "127.0.0.1")
    data_dir: Path = env("LAUNCHPAD_DATA_DIR", Path(".launchpad"), _dir)
    log_dir: Path = env("LAUNCHPAD_LOG_DIR", Path("reports/logs"), _dir)
    # None: auto (live when configured and answering, else embedded); True: embedded only; False: live only.
    simulation_mode: bool | None = env("SIMULATION_MODE", None, _tristate)
    # split: one process per service (Helm, compose); single: the edge and every service in one process.
    topology: str = env("LAUNCHPAD_TOPOLOGY", "split", _choice(*TOPOLOGIES))

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_PORT_OFFSET if self.port else 0

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"


@dataclass(frozen=True, slots=True)
class PeersSettings:
    """How this process reaches the others, and the credential it presents to their internal RPCs."""

    addresses: Mapping[str, str]  # LAUNCHPAD_<SVC>_ADDR, default 127.0.0.1:<its port>
    # LAUNCHPAD_BACKENDS, default the built services: those the edge's /health checks.
    backends: tuple[str, ...]
    runtime_agent_url: str = env("RUNTIME_AGENT_URL", "")  # POST <url>/execute; unset: in-process agent
    internal_secret: Secret = env("LAUNCHPAD_INTERNAL_SECRET", Secret(), _secret)  # see core/internal.py

    def address(self, service: str) -> str:
        return self.addresses[service]


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The platform database (unset: SQLite files in the data dir) and the key of the tenant roles."""

    dsn: SecretUrl = env("POSTGRES_DSN", SecretUrl(), _secret_url)
    tenant_secret: Secret = env("LAUNCHPAD_TENANT_DB_SECRET", Secret(), _secret)  # derives role passwords


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Shared edge rate limits and the realtime broker (unset: in process)."""

    url: SecretUrl = env("REDIS_URL", SecretUrl(), _secret_url)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Tokens auth issues and the edge verifies, the first admin, and the login throttle."""

    issuer: str = env("LAUNCHPAD_JWT_ISSUER", "launchpad-auth")
    audience: str = env("LAUNCHPAD_JWT_AUDIENCE", "launchpad")
    token_ttl_s: int = env("LAUNCHPAD_TOKEN_TTL_S", 3600, _int)
    key_path: Path | None = env("LAUNCHPAD_JWT_KEY_PATH", None, _optional_path)  # None: in the data dir
    admin_password: Secret = env("LAUNCHPAD_ADMIN_PASSWORD", Secret(), _secret)  # empty: generated once
    login_attempts_per_minute: int = env("LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE", 10, _int)


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """What the edge admits: browser origins, body size, request rates; and its address as clients see it."""

    cors_origins: tuple[str, ...] = env(
        "LAUNCHPAD_CORS_ORIGINS", ("http://localhost:3000", "http://127.0.0.1:3000"), _names
    )
    max_body_bytes: int = env("LAUNCHPAD_MAX_BODY_BYTES", 2 * 1024 * 1024, _int)
    rate_limit_per_minute: int = env("LAUNCHPAD_RATE_LIMIT_PER_MINUTE", 6000, _int)
    rate_limit_ip_per_minute: int = env("LAUNCHPAD_RATE_LIMIT_IP_PER_MINUTE", 12000, _int)
    # Embedded signed URLs point there.
    public_url: str = env("LAUNCHPAD_PUBLIC_URL", "http://127.0.0.1:8001", _url)


@dataclass(frozen=True, slots=True)
class QuerySettings:
    """Upper bounds of every tenant query."""

    timeout_ms: int = env("LAUNCHPAD_QUERY_TIMEOUT_MS", 30000, _int)
    max_rows: int = env("LAUNCHPAD_QUERY_MAX_ROWS", 10000, _int)
    max_bytes: int = env("LAUNCHPAD_QUERY_MAX_BYTES", 4 * 1024 * 1024, _int)


@dataclass(frozen=True, slots=True)
class SigningSettings:
    """Deploy's signing key sources, in order: Vault transit, a cosign key file, else a generated key."""

    vault_addr: str = env("VAULT_ADDR", "")
    vault_token: Secret = env("VAULT_TOKEN", Secret(), _secret)
    vault_transit_key: str = env("VAULT_TRANSIT_KEY", "launchpad-wpk")
    cosign_key_path: Path | None = env("COSIGN_KEY_PATH", None, _optional_path)
    cosign_password: Secret = env("COSIGN_PASSWORD", Secret(), _password)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Object storage: live S3 when the endpoint is set, else a folder of buckets (DESIGN section 4)."""

    endpoint: str  # MINIO_ENDPOINT as host:port
    secure: bool  # https:// in MINIO_ENDPOINT
    access_key: str = env("MINIO_ACCESS_KEY", "")
    secret_key: Secret = env("MINIO_SECRET_KEY", Secret(), _secret)
    max_upload_bytes: int = env("LAUNCHPAD_MAX_UPLOAD_BYTES", 100 * 1024 * 1024, _int)
    url_secret: Secret = env("LAUNCHPAD_STORAGE_URL_SECRET", Secret(), _secret)  # empty: in the data dir


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    """The realtime broker and how much of each topic it keeps for recovery by offset."""

    kafka_url: str = env("KAFKA_URL", "")  # host:port[,host:port]; unset: Redis or in process
    history: int = env("LAUNCHPAD_REALTIME_HISTORY", 1000, _int)  # messages per tenant topic


@dataclass(frozen=True, slots=True)
class AiSettings:
    """An OpenAI-compatible chat completions API when the key is set; unset: the embedded generator."""

    key: Secret = env("OPENAI_KEY", Secret(), _secret)
    base_url: str = env("OPENAI_BASE_URL", "https://api.openai.com/v1", _url)
    model: str = env("OPENAI_MODEL", "gpt-4o-mini")
    timeout_ms: int = env("LAUNCHPAD_AI_TIMEOUT_MS", 20000, _int)  # per language-model attempt (one retry)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Where the logs and metrics services query; unset: the services' own JSON logs and counters."""

    loki_url: str = env("LOKI_URL", "", _url)
    prom_url: str = env("PROM_URL", "", _url)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service or the edge reads from the environment (see the README's table)."""

    process: ProcessSettings
    peers: PeersSettings
    postgres: PostgresSettings
    redis: RedisSettings
    auth: AuthSettings
    edge: EdgeSettings
    query: QuerySettings
    signing: SigningSettings
    storage: StorageSettings
    realtime: RealtimeSettings
    ai: AiSettings
    telemetry: TelemetrySettings


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
    raw = _text("MINIO_ENDPOINT", "")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return raw.rstrip("/"), False
    if scheme not in ("http", "https"):
        raise ConfigError(f"MINIO_ENDPOINT must be host:port or http(s)://host:port, got {raw!r}")
    return rest.rstrip("/"), scheme == "https"


def _addresses() -> Mapping[str, str]:
    return MappingProxyType(
        {
            name: _text(
                f"LAUNCHPAD_{name.upper()}_ADDR", f"127.0.0.1:{_int(f'LAUNCHPAD_{name.upper()}_PORT', port)}"
            )
            for name, port in SERVICES.items()
        }
    )


def load_settings(service: str) -> Settings:
    """Reads the environment for `service` ("edge" or one of SERVICES)."""
    if service != "edge" and service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}")
    port = _int(f"LAUNCHPAD_{service.upper()}_PORT", _default_port(service))
    endpoint, secure = _minio_endpoint()
    return Settings(
        process=_read(ProcessSettings, service=service, port=port),
        peers=_read(
            PeersSettings,
            addresses=_addresses(),
            backends=_names("LAUNCHPAD_BACKENDS", tuple(built_services())),
        ),
        postgres=_read(PostgresSettings),
        redis=_read(RedisSettings),
        auth=_read(AuthSettings),
        edge=_read(EdgeSettings),
        query=_read(QuerySettings),
        signing=_read(SigningSettings),
        storage=_read(StorageSettings, endpoint=endpoint, secure=secure),
        realtime=_read(RealtimeSettings),
        ai=_read(AiSettings),
        telemetry=_read(TelemetrySettings),
    )
