"""Wires the auth service: signing keys, platform database, first admin, servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.bootstrap import ensure_admin
from services.auth.enforcement import DataEnforcer
from services.auth.keys import KEY_FILE, load_key_ring
from services.auth.live import LiveDryRun
from services.auth.login import Authenticator, TokenSettings
from services.auth.passwords import Passwords
from services.auth.policy_admin import PolicyAdmin
from services.auth.probes import ServiceProber
from services.auth.ratelimit import LoginLimiter
from services.auth.servicer import AuthServicer
from services.auth.store import AuthStore
from services.auth.users import Users
from services.core.config import Settings
from services.core.db import open_platform_db
from services.core.errors import Unavailable
from services.core.internal import internal_secret
from services.core.server import Runtime, ServiceSpec

MIGRATIONS = Path(__file__).with_name("migrations")
ADMIN_RETRY_S = 5.0


def key_path(settings: Settings) -> Path:
    """LAUNCHPAD_JWT_KEY_PATH (a mounted secret, shared by replicas), else <data_dir>/auth/jwt-signing-key.pem."""
    return settings.auth.key_path or settings.process.data_dir / "auth" / KEY_FILE


async def build(runtime: Runtime) -> list[ServiceSpec]:
    settings = runtime.settings
    ring = await asyncio.to_thread(load_key_ring, key_path(settings))
    runtime.keys = ring.static_keys()  # the kit verifies our own tokens without calling us
    runtime.log.info("jwt signing key ready", extra={"kid": ring.signing_kid, "keys": len(ring.keys)})
    db = await open_platform_db(settings, runtime.deps, migrations=MIGRATIONS)
    runtime.closers.append(db.close)
    passwords = Passwords()
    runtime.closers.append(passwords.close)
    store = AuthStore(db)
    await _first_admin(runtime, store, passwords)
    tokens = TokenSettings(settings.auth.token_ttl_s, settings.auth.issuer, settings.auth.audience)
    limiter = LoginLimiter(settings.auth.login_attempts_per_minute)
    # Policy changes are applied by the data service before they are stored (services/auth/enforcement.py).
    enforcer = DataEnforcer(settings.peers.address("data"), internal_secret(settings))
    runtime.closers.append(enforcer.close)
    # Live dry runs are decided by the services that enforce policies (services/auth/probes.py).
    prober = ServiceProber(
        settings.peers.address("data"), settings.peers.address("storage"), internal_secret(settings)
    )
    runtime.closers.append(prober.close)
    servicer = AuthServicer(
        Authenticator(store, passwords, ring, limiter, tokens),
        Users(store, passwords),
        PolicyAdmin(store, enforcer),
        ring.jwks(),
        LiveDryRun(store, prober),
    )
    descriptor = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
    return [ServiceSpec(descriptor, servicer, auth_pb2_grpc.add_AuthServiceServicer_to_server)]


async def _first_admin(runtime: Runtime, store: AuthStore, passwords: Passwords) -> None:
    """Creates the first admin now, or (PostgreSQL down with SIMULATION_MODE=false) as soon as it answers."""
    auth_dir = runtime.settings.process.data_dir / "auth"
    admin_password = runtime.settings.auth.admin_password.reveal()

    async def attempt() -> None:
        await ensure_admin(store, passwords, auth_dir, admin_password, runtime.log)

    try:
        await attempt()
    except Unavailable as exc:
        runtime.log.warning("first admin not created yet: %s; retrying", exc.message)
        runtime.tasks.append(asyncio.create_task(_retry(attempt, runtime)))


async def _retry(attempt: Callable[[], Awaitable[None]], runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(ADMIN_RETRY_S)
        try:
            await attempt()
            return
        except Unavailable:
            continue
        except Exception:
            runtime.log.exception("creating the first admin failed")
            return
