"""Artifact signing, cosign sign-blob style: ECDSA P-256 over SHA-256 of the blob, ASN.1 DER, base64.

`openssl dgst -sha256 -verify key.pub -signature sig.der artifact.tar.gz` verifies such a signature (after
base64-decoding it into sig.der), and so does `cosign verify-blob --key key.pub --signature sig.b64`.

Key sources, in order (DESIGN section 4):
- "vault": Vault/OpenBao transit (VAULT_ADDR + VAULT_TOKEN), key VAULT_TRANSIT_KEY of type ecdsa-p256,
  created when missing; signs the prehashed sha2-256 digest; every key version's public key is trusted.
- "cosign-key": COSIGN_KEY_PATH, a PEM EC P-256 private key or cosign's "ENCRYPTED SIGSTORE PRIVATE KEY"
  (scrypt + nacl/secretbox, decrypted with COSIGN_PASSWORD).
- "embedded": a P-256 key generated once in <data_dir>/deploy/. Trusted unless SIMULATION_MODE=false: in
  live mode a key that exists only because the embedded default made it is not a trust anchor.
Only the configured source's keys are trusted: a signature by any other key is refused at deploy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hvac
import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from services.core.blocking import Blocking
from services.core.config import ConfigError, Settings
from services.core.deps import Mode, Registry, select_mode
from services.core.errors import Unavailable
from services.core.files import create_once

VAULT, COSIGN, EMBEDDED = "vault", "cosign-key", "embedded"
EMBEDDED_KEY_FILE = Path("deploy") / "wpk-signing-key.pem"
VAULT_TIMEOUT_S = 5
_VAULT_SIGNATURE = re.compile(r"^vault:v(\d+):(.+)$")
_ENCRYPTED_MARKERS = (b"ENCRYPTED SIGSTORE PRIVATE KEY", b"ENCRYPTED COSIGN PRIVATE KEY")
_SCRYPT_MAXMEM = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    key_source: str
    pem: str
    trusted: bool

    def verifies(self, signature_b64: str, data: bytes) -> bool:
        """Whether the base64 DER signature is this key's ECDSA-P256/SHA-256 signature of `data`."""
        try:
            der = base64.b64decode(signature_b64, validate=True)
            key = serialization.load_pem_public_key(self.pem.encode("ascii"))
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signature:
    signature: str  # base64 ASN.1 DER
    key_id: str
    key_source: str


class Signer(Protocol):
    source: str

    async def sign(self, digest: bytes) -> Signature: ...

    async def public_keys(self) -> list[PublicKey]: ...


def key_fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    """sha256:<hex> of the DER SubjectPublicKeyInfo: the id of a local key."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def public_pem(public: ec.EllipticCurvePublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


class LocalKeySigner:
    """A private key held in this process (cosign key file or the embedded generated key)."""

    def __init__(self, private: ec.EllipticCurvePrivateKey, source: str, trusted: bool) -> None:
        self.source = source
        self._private = private
        public = private.public_key()
        self._key = PublicKey(key_fingerprint(public), source, public_pem(public), trusted)

    async def sign(self, digest: bytes) -> Signature:
        der = self._private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return Signature(base64.b64encode(der).decode("ascii"), self._key.key_id, self.source)

    async def public_keys(self) -> list[PublicKey]:
        return [self._key]


class VaultSigner:
    """Vault/OpenBao transit. hvac is blocking: every call runs in a small pool of its own."""

    source = VAULT

    def __init__(self, addr: str, token: str, key_name: str) -> None:
        self._client = hvac.Client(url=addr, token=token, timeout=VAULT_TIMEOUT_S)
        self._key = key_name
        self._pool = Blocking("vault", 2)
        self.ready = False

    async def ensure_key(self) -> None:
        """Creates the ecdsa-p256 key when missing; raises Unavailable when Vault does not answer."""
        await self._call(self._ensure_key)
        self.ready = True

    def _ensure_key(self) -> None:
        try:
            info = self._client.secrets.transit.read_key(self._key)
        except hvac.exceptions.InvalidPath:
            self._client.secrets.transit.create_key(self._key, key_type="ecdsa-p256")
            info = self._client.secrets.transit.read_key(self._key)
        if info["data"]["type"] != "ecdsa-p256":
            raise ConfigError(f"Vault transit key {self._key!r} is {info['data']['type']}, not ecdsa-p256")

    async def sign(self, digest: bytes) -> Signature:
        if not self.ready:
            await self.ensure_key()
        answer = await self._call(
            self._client.secrets.transit.sign_data,
            self._key,
            hash_input=base64.b64encode(digest).decode("ascii"),
            hash_algorithm="sha2-256",
            prehashed=True,
            marshaling_algorithm="asn1",
        )
        match = _VAULT_SIGNATURE.match(answer["data"]["signature"])
        if match is None:
            raise Unavailable("Vault transit returned a signature without the vault:vN: prefix")
        return Signature(match[2], f"vault:{self._key}:v{match[1]}", VAULT)

    async def public_keys(self) -> list[PublicKey]:
        info = await self._call(self._client.secrets.transit.read_key, self._key)
        versions: dict[str, Any] = info["data"]["keys"]
        return [
            PublicKey(f"vault:{self._key}:v{version}", VAULT, entry["public_key"], True)
            for version, entry in sorted(versions.items(), key=lambda item: int(item[0]))
        ]

    async def ping(self) -> None:
        await self._call(self._client.secrets.transit.read_key, self._key)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._pool.run(fn, *args, **kwargs)
        # requests' errors (refused, timed out) are OSErrors; hvac raises VaultError for HTTP errors.
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise Unavailable(f"Vault transit is not available: {exc}".strip()) from exc

    def close(self) -> None:
        self._pool.shutdown()


# --- key files -------------------------------------------------------------------------------------------


def load_private_key(pem: bytes, password: str) -> ec.EllipticCurvePrivateKey:
    """A cosign key file (encrypted sigstore format) or a PEM EC key (optionally password-protected)."""
    if any(marker in pem for marker in _ENCRYPTED_MARKERS):
        key = serialization.load_der_private_key(decrypt_cosign_key(pem, password), password=None)
    else:
        key = serialization.load_pem_private_key(pem, password=password.encode() or None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("the signing key must be an EC P-256 private key")
    return key


def decrypt_cosign_key(pem: bytes, password: str) -> bytes:
    """cosign's encrypted key: a PEM around JSON {kdf: scrypt, cipher: nacl/secretbox, ciphertext}.

    The format comes from go-securesystemslib's `encrypted` package, which cosign uses: the secretbox key
    is scrypt(password, salt, N, r, p, 32 bytes); the plaintext is the PKCS#8 DER private key.
    """
    lines = [line.strip() for line in pem.decode("ascii").splitlines()]
    body = "".join(line for line in lines if line and not line.startswith("-----"))
    try:
        document = json.loads(base64.b64decode(body))
        kdf, cipher = document["kdf"], document["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise ConfigError(f"unsupported cosign key encryption {kdf['name']}/{cipher['name']}")
        params = kdf["params"]
        secret = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(kdf["salt"]),
            n=params["N"],
            r=params["r"],
            p=params["p"],
            maxmem=_SCRYPT_MAXMEM,
            dklen=32,
        )
        box = nacl.secret.SecretBox(secret)
        return box.decrypt(base64.b64decode(document["ciphertext"]), base64.b64decode(cipher["nonce"]))
    except nacl.exceptions.CryptoError:
        raise ConfigError("COSIGN_PASSWORD does not decrypt the cosign key") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed encrypted cosign key: {exc}") from None


def _new_private_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def embedded_signer(settings: Settings) -> LocalKeySigner:
    pem = create_once(settings.process.data_dir / EMBEDDED_KEY_FILE, _new_private_pem)
    return LocalKeySigner(
        load_private_key(pem, ""), EMBEDDED, trusted=settings.process.simulation_mode is not False
    )


# --- choosing the source ---------------------------------------------------------------------------------


async def open_signer(settings: Settings, deps: Registry, log: logging.Logger) -> Signer:
    """The first configured key source, registered as the "signing" dependency."""
    fallback_reason = ""
    if settings.signing.vault_addr and settings.process.simulation_mode is not True:
        vault = VaultSigner(
            settings.signing.vault_addr,
            settings.signing.vault_token.reveal(),
            settings.signing.vault_transit_key,
        )
        try:
            await vault.ensure_key()
        except Unavailable as exc:
            fallback_reason = exc.message
        mode = select_mode(settings.process.simulation_mode, True, vault.ready)
        if mode is Mode.LIVE:
            target = f"{settings.signing.vault_addr} transit/{settings.signing.vault_transit_key}"
            deps.add("signing", Mode.LIVE, target, detail="Vault transit", check=vault.ping)
            if not vault.ready:  # SIMULATION_MODE=false: never sign with another key
                deps.mark("signing", False, f"{fallback_reason} (SIMULATION_MODE=false: no fallback)")
            return vault
        vault.close()
        log.warning("Vault transit not answering, falling back: %s", fallback_reason)
    if settings.signing.cosign_key_path and settings.process.simulation_mode is not True:
        pem = settings.signing.cosign_key_path.read_bytes()
        signer = LocalKeySigner(
            load_private_key(pem, settings.signing.cosign_password.reveal()), COSIGN, trusted=True
        )
        _register_local(deps, signer, str(settings.signing.cosign_key_path), fallback_reason)
        return signer
    signer = embedded_signer(settings)
    _register_local(deps, signer, str(settings.process.data_dir / EMBEDDED_KEY_FILE), fallback_reason)
    return signer


def _register_local(deps: Registry, signer: LocalKeySigner, target: str, fallback_reason: str) -> None:
    remediation = "set VAULT_ADDR and VAULT_TOKEN to a reachable Vault (transit engine enabled)"
    if fallback_reason:
        detail = f"Vault not answering ({fallback_reason}); signing with the {signer.source} key"
        deps.add("signing", Mode.FALLBACK, target, detail=detail, remediation=remediation)
    elif signer.source == EMBEDDED:
        deps.add("signing", Mode.EMBEDDED, target, detail="generated key", remediation=remediation)
    else:
        deps.add("signing", Mode.LIVE, target, detail="cosign key file")
