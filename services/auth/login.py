"""Login: password check (off the event loop), failed-attempt limits, token issue.

"No such user" and "wrong password" give the same message after the same argon2 work. A disabled user gets
its own message only after presenting the right password, so it reveals nothing to a guesser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from services.auth.keys import IssuedToken, KeyRing
from services.auth.passwords import Passwords
from services.auth.ratelimit import LoginLimiter
from services.auth.store import AuthStore, UserRecord
from services.auth.users import now_ms
from services.core.errors import Unauthenticated

BAD_CREDENTIALS = "invalid username or password"
MAX_USERNAME = 128

log = logging.getLogger("launchpad.auth.login")


@dataclass(frozen=True, slots=True)
class TokenSettings:
    ttl_s: int
    issuer: str
    audience: str


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: IssuedToken
    user: UserRecord


class Authenticator:
    def __init__(
        self,
        store: AuthStore,
        passwords: Passwords,
        keys: KeyRing,
        limiter: LoginLimiter,
        tokens: TokenSettings,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._keys = keys
        self._limiter = limiter
        self._tokens = tokens

    async def login(self, username: str, password: str, client: str) -> LoginResult:
        """A token for username, or Unauthenticated; ResourceExhausted once the failures pile up."""
        if not username or len(username) > MAX_USERNAME or not password:
            raise Unauthenticated(BAD_CREDENTIALS)
        reservation = self._limiter.reserve(username, client)
        try:
            user = await self._store.get_user(username)
            matched = await self._passwords.verify(user.password_hash if user else None, password)
        except BaseException:  # the database failed, not the caller: the attempt does not count
            self._limiter.release(reservation)
            raise
        if not matched or user is None:
            # A security event, not per-request logging: failed logins are what an operator searches for.
            log.warning("failed login", extra={"username": username, "client": client})
            raise Unauthenticated(BAD_CREDENTIALS)
        self._limiter.release(reservation)
        if user.disabled:
            raise Unauthenticated("user is disabled")
        await self._upgrade_hash(user, password)
        claims = {"sub": user.username, "tenant": user.tenant, "roles": list(user.roles)}
        token = self._keys.issue(
            claims, ttl_s=self._tokens.ttl_s, issuer=self._tokens.issuer, audience=self._tokens.audience
        )
        return LoginResult(token, user)

    async def _upgrade_hash(self, user: UserRecord, password: str) -> None:
        """Re-hashes with the current argon2 parameters once they changed (only possible with the password)."""
        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash(password)
            await self._store.update_user(replace(user, password_hash=new_hash, updated_at=now_ms()))
