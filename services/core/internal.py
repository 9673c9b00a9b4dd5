"""The internal credential: how one Launchpad process proves to another that it is one of them.

RPCs marked `access.internal` in the contract (the realtime Relay the edge multiplexes its sockets over) take
no user token: they act for many users at once, and the caller has already verified each user. They take
this shared secret instead, in the `x-launchpad-internal` metadata. The edge builds its backend metadata
from scratch, so a client can never pass it through.

The secret is LAUNCHPAD_INTERNAL_SECRET (set it, from a Kubernetes Secret, when processes do not share a
data dir), else a random file made once in the data dir that every process of `make up` shares.
"""

from __future__ import annotations

import hmac
import secrets

from services.core.config import Settings
from services.core.errors import Unauthenticated
from services.core.files import create_once

METADATA_KEY = "x-launchpad-internal"
SECRET_FILE = "internal-secret"


def internal_secret(settings: Settings) -> str:
    if settings.peers.internal_secret:
        return settings.peers.internal_secret.reveal()
    made = create_once(settings.process.data_dir / SECRET_FILE, lambda: secrets.token_hex(32).encode())
    return made.decode().strip()


def verify(presented: str | None, secret: str) -> None:
    """Unauthenticated unless `presented` is the secret (compared in constant time)."""
    if not presented or not hmac.compare_digest(presented.encode(), secret.encode()):
        raise Unauthenticated("this RPC is internal: only Launchpad processes may call it")
