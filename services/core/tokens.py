"""ES256 JWT verification, shared by the edge and every service (defence in depth).

Only ES256 is accepted, so `alg: none` and HS256-with-the-public-key forgeries fail before any key is used.
Verified tokens are cached by their exact bytes until they expire: a P-256 verify is the costly part of a
call's authentication, and a client sends the same token many times.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Protocol

import jwt
from jwt.algorithms import ECAlgorithm

from services.core.context import Principal
from services.core.errors import Unauthenticated, Unavailable

ALGORITHM = "ES256"
_CACHE_SIZE = 4096


class KeyProvider(Protocol):
    async def key_for(self, kid: str) -> Any | None:
        """The public key with this kid, or None when unknown (after one refresh)."""
        ...


def keys_from_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """kid -> public key for the EC P-256 keys of a JWK Set."""
    keys = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256" and jwk.get("kid"):
            keys[jwk["kid"]] = ECAlgorithm.from_jwk(dict(jwk))
    return keys


class StaticKeys:
    """Keys known in-process (the auth service's own keys, tests)."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = keys

    async def key_for(self, kid: str) -> Any | None:
        return self._keys.get(kid)


class RefreshingKeys:
    """Keys fetched from a JWKS source, refreshed on an unknown kid (key rotation), at most every few seconds."""

    def __init__(self, fetch: Any, min_refresh_s: float = 5.0) -> None:
        self._fetch = fetch  # async () -> JWKS dict
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._min_refresh_s = min_refresh_s
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> Any | None:
        if kid not in self._keys and time.monotonic() - self._fetched_at >= self._min_refresh_s:
            async with self._lock:
                if kid not in self._keys:
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        try:
            self._keys = keys_from_jwks(await self._fetch())
        except Exception as exc:
            # "cannot fetch keys" is not "forged token": 503, retried after about a second.
            self._fetched_at = time.monotonic() - self._min_refresh_s + 1.0
            raise Unavailable(f"cannot fetch signing keys: {exc}") from None
        self._fetched_at = time.monotonic()


class TokenVerifier:
    """Verifies bearer tokens into Principals: ES256 only, kid known, iss/aud/exp checked."""

    def __init__(self, keys: KeyProvider, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached.expires_at > time.time():
            return cached
        principal = await self._verify(token)
        self._remember(token, principal)
        return principal

    async def verify_header(self, authorization: str | None) -> Principal:
        """Verifies an `Authorization: Bearer <jwt>` value."""
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        return await self.verify(token.strip())

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(f"token algorithm must be {ALGORITHM}")
        key = await self._keys.key_for(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        return principal_from_claims(claims)

    def _remember(self, token: str, principal: Principal) -> None:
        self._cache[token] = principal
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    tenant, roles = claims.get("tenant"), claims.get("roles")
    if not isinstance(tenant, str) or not tenant:
        raise Unauthenticated("token has no tenant claim")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("token roles claim must be a list of strings")
    return Principal(
        subject=str(claims["sub"]),
        tenant=tenant,
        roles=tuple(roles),
        token_id=str(claims.get("jti", "")),
        expires_at=int(claims["exp"]),
    )
