"""Password hashing with argon2id, always off the event loop (a hash costs tens of milliseconds of CPU).

Unknown users are verified against a dummy hash made with the same parameters, so "no such user" and "wrong
password" take about the same time. Hashes and passwords are never logged or returned.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.core.blocking import Blocking


class Passwords:
    """argon2id hashing in a small dedicated pool, so logins cannot starve the database pool."""

    def __init__(self, hasher: PasswordHasher | None = None, workers: int = 2) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, 64 MiB)
        self._pool = Blocking("argon2", max_workers=workers)
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await self._pool.run(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether password matches; with no stored hash, burns the same time and answers False."""
        if stored_hash is None:
            await self._pool.run(self._check, self._dummy, password)
            return False
        return await self._pool.run(self._check, stored_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with older parameters (then it is replaced after a good login)."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown()

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
