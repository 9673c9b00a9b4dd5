"""The auth service's ES256 signing keys: created once, published as a JWKS, used to issue tokens.

The signing key lives in `<data_dir>/auth/jwt-signing-key.pem` (or LAUNCHPAD_JWT_KEY_PATH). It is created with
a link(2) of a fully written temporary file, so two replicas starting at once end up with the same key: the
loser's link fails and it reads the winner's file. Rotation: move the old PEM into `previous-keys/` next to
it and restart; the new key signs, the old one stays in the JWKS until its tokens have expired and the file is
removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.core.files import create_once
from services.core.tokens import ALGORITHM, StaticKeys

KEY_FILE = "jwt-signing-key.pem"
PREVIOUS_DIR = "previous-keys"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7518 members of a P-256 public key (x and y are 32-byte big-endian, base64url)."""
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the required members, sorted, no whitespace."""
    canonical = json.dumps(public_jwk(public), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    public: ec.EllipticCurvePublicKey

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.public), "kid": self.kid, "use": "sig", "alg": ALGORITHM}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: int
    expires_at: int


class KeyRing:
    """The signing key plus older public keys kept for verification; the newest key signs."""

    def __init__(
        self, signing: ec.EllipticCurvePrivateKey, previous: Sequence[ec.EllipticCurvePublicKey] = ()
    ):
        self._signing = signing
        self.signing_kid = thumbprint(signing.public_key())
        current = VerifyKey(self.signing_kid, signing.public_key())
        older = [VerifyKey(thumbprint(key), key) for key in previous]
        self.keys: tuple[VerifyKey, ...] = (current, *(k for k in older if k.kid != self.signing_kid))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.jwk() for key in self.keys]}

    def static_keys(self) -> StaticKeys:
        """For the kit's interceptor: verifies this service's own tokens without calling itself."""
        return StaticKeys({key.kid: key.public for key in self.keys})

    def issue(self, claims: dict[str, Any], *, ttl_s: int, issuer: str, audience: str) -> IssuedToken:
        """Signs `claims` (sub, tenant, roles) with iat, nbf, exp, iss, aud and a fresh jti."""
        now = int(time.time())
        jti = uuid.uuid4().hex
        payload = {**claims, "iat": now, "nbf": now, "exp": now + ttl_s, "iss": issuer, "aud": audience}
        payload["jti"] = jti
        token = jwt.encode(payload, self._signing, algorithm=ALGORITHM, headers={"kid": self.signing_kid})
        return IssuedToken(token, jti, now, now + ttl_s)


def load_key_ring(key_path: Path) -> KeyRing:
    """The key at key_path (created when absent) and the public halves of the PEMs in previous-keys/."""
    signing = _load_private(create_once(key_path, _new_private_pem))
    previous_dir = key_path.parent / PREVIOUS_DIR
    previous = [_load_public(p.read_bytes()) for p in sorted(previous_dir.glob("*.pem"))]
    return KeyRing(signing, previous)


def _new_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the JWT signing key must be an EC P-256 private key (ES256)")
    return key


def _load_public(pem: bytes) -> ec.EllipticCurvePublicKey:
    """A previous key file may hold the private key or only its public half."""
    if b"PRIVATE KEY" in pem:
        return _load_private(pem).public_key()
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("a previous JWT key must be an EC P-256 key")
    return key
