"""Signing key files: cosign's encrypted format, PEM keys, and the verification rule."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.core.config import ConfigError
from services.deploy.signing import COSIGN, LocalKeySigner, load_private_key

N, R, P = 1024, 8, 1  # cosign uses N=65536 (also supported); a small N keeps the test fast


def cosign_encrypted(key: ec.EllipticCurvePrivateKey, password: str) -> bytes:
    """The go-securesystemslib `encrypted` layout cosign writes: scrypt KDF, nacl secretbox, PKCS#8 DER."""
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt, nonce = os.urandom(32), os.urandom(24)
    secret = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    sealed = nacl.secret.SecretBox(secret).encrypt(der, nonce).ciphertext
    document = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": N, "r": R, "p": P},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    body = base64.b64encode(json.dumps(document).encode()).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        [
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----",
            *lines,
            "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----",
            "",
        ]
    ).encode()


def test_an_encrypted_cosign_key_decrypts_with_its_password() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    loaded = load_private_key(cosign_encrypted(key, "pa ss"), "pa ss")
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(ConfigError, match="COSIGN_PASSWORD does not decrypt"):
        load_private_key(cosign_encrypted(key, "pa ss"), "wrong")


def test_only_p256_keys_are_accepted() -> None:
    for other in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        pem = other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with pytest.raises(ConfigError, match="P-256"):
            load_private_key(pem, "")


async def test_a_signature_verifies_only_for_its_data_and_key() -> None:
    signer = LocalKeySigner(ec.generate_private_key(ec.SECP256R1()), COSIGN, trusted=True)
    other = LocalKeySigner(ec.generate_private_key(ec.SECP256R1()), COSIGN, trusted=True)
    data = b"artifact bytes"
    signature = await signer.sign(hashlib.sha256(data).digest())
    [key], [other_key] = await signer.public_keys(), await other.public_keys()
    assert signature.key_id == key.key_id and key.key_id.startswith("sha256:")
    assert key.verifies(signature.signature, data)
    assert not key.verifies(signature.signature, data + b"!")
    assert not other_key.verifies(signature.signature, data)
    assert not key.verifies("not base64!", data)
