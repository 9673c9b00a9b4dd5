"""Signing keys: RFC 7638 kid, atomic create-once, JWKS shape, rotation, issued tokens."""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.auth.keys import KEY_FILE, PREVIOUS_DIR, KeyRing, load_key_ring, thumbprint
from services.core.errors import Unauthenticated
from services.core.tokens import TokenVerifier

# RFC 7517 appendix A.1, the example P-256 key.
RFC_X = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"
RFC_Y = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"


def _int(b64: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)), "big")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = ec.EllipticCurvePublicNumbers(_int(RFC_X), _int(RFC_Y), ec.SECP256R1()).public_key()
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{RFC_X}","y":"{RFC_Y}"}}'.encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert thumbprint(key) == expected


def test_coordinates_keep_their_leading_zero_bytes() -> None:
    # x = 1 is on no curve, so search a real key whose x has a leading zero byte: about 1 in 256 do.
    for _ in range(5000):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        if key.public_numbers().x < 1 << 248:
            break
    assert key.public_numbers().x < 1 << 248
    jwk = KeyRing(ec.generate_private_key(ec.SECP256R1()), [key]).jwks()["keys"][1]
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "auth" / KEY_FILE
    first = load_key_ring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_ring(path).signing_kid == first.signing_kid
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]


def _kid_of(path: str) -> str:
    return load_key_ring(Path(path)).signing_kid


def test_processes_racing_to_create_the_key_agree(tmp_path: Path) -> None:
    path = tmp_path / "auth" / KEY_FILE
    with multiprocessing.get_context("fork").Pool(4) as pool:
        kids = pool.map(_kid_of, [str(path)] * 8)
    assert len(set(kids)) == 1
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]


async def test_jwks_lists_every_key_and_the_newest_signs(tmp_path: Path) -> None:
    path = tmp_path / "auth" / KEY_FILE
    old = load_key_ring(path)
    claims = {"sub": "a", "tenant": "t", "roles": ["viewer"]}
    old_token = old.issue(claims, ttl_s=60, issuer="i", audience="a").token
    (path.parent / PREVIOUS_DIR).mkdir()
    path.rename(path.parent / PREVIOUS_DIR / "2024-01.pem")  # rotation: retire the key, restart
    ring = load_key_ring(path)
    assert ring.signing_kid != old.signing_kid
    jwks = ring.jwks()["keys"]
    assert [k["kid"] for k in jwks] == [ring.signing_kid, old.signing_kid]
    assert all(set(k) == {"kty", "crv", "x", "y", "kid", "use", "alg"} for k in jwks)
    assert all((k["kty"], k["crv"], k["use"], k["alg"]) == ("EC", "P-256", "sig", "ES256") for k in jwks)
    new_token = ring.issue(claims, ttl_s=60, issuer="i", audience="a").token
    assert jwt.get_unverified_header(new_token)["kid"] == ring.signing_kid
    assert jwt.get_unverified_header(old_token)["kid"] == old.signing_kid
    verifier = TokenVerifier(ring.static_keys(), "i", "a")
    for token in (old_token, new_token):  # tokens of the retired key still verify until it is removed
        assert (await verifier.verify(token)).subject == "a"


def test_previous_keys_may_be_public_only(tmp_path: Path) -> None:
    path = tmp_path / "auth" / KEY_FILE
    retired = ec.generate_private_key(ec.SECP256R1()).public_key()
    (path.parent / PREVIOUS_DIR).mkdir(parents=True)
    (path.parent / PREVIOUS_DIR / "old.pem").write_bytes(
        retired.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert load_key_ring(path).jwks()["keys"][1]["kid"] == thumbprint(retired)


async def test_issued_tokens_verify_with_the_kit_verifier(tmp_path: Path) -> None:
    ring = load_key_ring(tmp_path / KEY_FILE)
    issued = ring.issue(
        {"sub": "bob", "tenant": "acme", "roles": ["developer"]}, ttl_s=120, issuer="i", audience="a"
    )
    principal = await TokenVerifier(ring.static_keys(), "i", "a").verify(issued.token)
    assert (principal.subject, principal.tenant, principal.roles) == ("bob", "acme", ("developer",))
    assert principal.token_id == issued.jti and principal.expires_at == issued.expires_at
    assert issued.expires_at - issued.issued_at == 120
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["nbf"] == claims["iat"] == issued.issued_at
    with pytest.raises(Unauthenticated):
        await TokenVerifier(ring.static_keys(), "i", "other-audience").verify(issued.token)


def test_tokens_get_unique_ids(tmp_path: Path) -> None:
    ring = load_key_ring(tmp_path / KEY_FILE)
    ids = {ring.issue({"sub": "x"}, ttl_s=1, issuer="i", audience="a").jti for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize(
    "key",
    [rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP384R1())],
    ids=["rsa", "p384"],
)
def test_a_key_that_cannot_sign_es256_is_refused(tmp_path: Path, key: object) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        load_key_ring(path)
