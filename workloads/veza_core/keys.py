"""JWT signing keys: generation, the Secret layout, and loading with rotation.

The platform's key Secret holds two entries:

``signing-keys.json``
    a JWK Set of private keys; the first is the active signer. Only the API mounts it.
``jwks.json``
    the public half of every key in the set. Every worker mounts it to verify tokens.

Rotation: a new key is published in ``jwks.json`` first, signs (first in
``signing-keys.json``) once every worker can know it, and the key it replaced stays until
the tokens it signed have expired; the operator runs those stages on a schedule kept in the
Secret's annotation ``veza.io/key-schedule``. Workers reload the mounted files when they change
(the kubelet swaps a Secret volume's files at once, through its ``..data`` symlink). See
docs/api.md, "Keys and rotation", and docs/operator.md, "Signing-key rotation".
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

SIGNING_KEYS_FILE = "signing-keys.json"
PUBLIC_KEYS_FILE = "jwks.json"
# On the keys Secret: every key's times (published, activates, retires), written by the operator.
SCHEDULE_ANNOTATION = "veza.io/key-schedule"
# On a VezaPlatform: a new value asks the operator for a rotation now (`veza keys rotate`).
ROTATE_ANNOTATION = "veza.io/rotate-keys"
# The longest a token the API signs besides access tokens lives: service tokens for chat and stream
# (300 s) and the OIDC pending login (600 s). A replaced key verifies at least this long by default.
SHORT_TOKENS_SECONDS = 600


def generate_signing_key(kid: str | None = None) -> dict[str, Any]:
    """A new Ed25519 private key as a JWK (alg EdDSA) with a random key id."""
    jwk = json.loads(OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate()))
    jwk.update({"kid": kid or f"k-{int(time.time())}-{secrets.token_hex(4)}", "alg": "EdDSA", "use": "sig"})
    return dict(jwk)


def public_jwk(private: dict[str, Any]) -> dict[str, Any]:
    """The public members of a private JWK."""
    private_members = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    return {k: v for k, v in private.items() if k not in private_members}


def secret_data(signing_keys: list[dict[str, Any]]) -> dict[str, str]:
    """The string data of the key Secret for an ordered list of private keys (active first)."""
    return {
        SIGNING_KEYS_FILE: json.dumps({"keys": signing_keys}, sort_keys=True),
        PUBLIC_KEYS_FILE: json.dumps({"keys": [public_jwk(k) for k in signing_keys]}, sort_keys=True),
    }


def _identity(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


class KeySet:
    """JWKs read from a mounted directory, reloaded when the files change (rotation)."""

    def __init__(self, directory: Path | None = None, *, jwks: dict[str, Any] | None = None,
                 recheck_seconds: float = 5.0) -> None:
        self.directory = directory
        self.recheck_seconds = recheck_seconds
        self._public: dict[str, jwt.PyJWK] = {}
        self._public_jwks: list[dict[str, Any]] = []
        self._signing: list[jwt.PyJWK] = []
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._checked = 0.0
        if jwks is not None:
            self._load_public(jwks)
        elif directory is not None:
            self.reload()

    @classmethod
    def from_private_keys(cls, signing_keys: list[dict[str, Any]]) -> KeySet:
        ks = cls(jwks={"keys": [public_jwk(k) for k in signing_keys]})
        ks._signing = [jwt.PyJWK(k) for k in signing_keys]
        return ks

    def _load_public(self, jwks: dict[str, Any]) -> None:
        usable = [jwk for jwk in jwks.get("keys", []) if "kid" in jwk and "alg" in jwk]
        # Keys without an id or algorithm cannot be matched to a token safely: ignored.
        self._public = {jwk["kid"]: jwt.PyJWK(jwk) for jwk in usable}
        self._public_jwks = [public_jwk(jwk) for jwk in usable]

    def _files(self) -> list[Path]:
        assert self.directory is not None
        return [self.directory / PUBLIC_KEYS_FILE, self.directory / SIGNING_KEYS_FILE]

    def reload(self, force: bool = True) -> None:
        if self.directory is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_seconds:
            return
        self._checked = now
        # Inode and mtime: a kubelet update swaps in new files, which a same-second mtime alone could hide.
        stamp = tuple(_identity(f) for f in self._files())
        if stamp == self._stamp:
            return
        public_file, signing_file = self._files()
        if public_file.exists():
            self._load_public(json.loads(public_file.read_text()))
        if signing_file.exists():
            self._signing = [jwt.PyJWK(k) for k in json.loads(signing_file.read_text()).get("keys", [])]
        self._stamp = stamp

    def public_key(self, kid: str) -> jwt.PyJWK | None:
        self.reload(force=False)
        key = self._public.get(kid)
        if key is None and self.directory is not None:
            self.reload(force=True)  # a token signed by a key rotated in a moment ago
            key = self._public.get(kid)
        return key

    def active_signing_key(self) -> tuple[str, jwt.PyJWK]:
        """Key id and key of the signer: the first key of signing-keys.json."""
        self.reload(force=False)
        if not self._signing:
            raise LookupError("no signing key available (signing-keys.json missing or empty)")
        key = self._signing[0]
        return str(key.key_id), key

    def jwks(self) -> dict[str, Any]:
        """Public JWK Set, as served by the API's /.well-known/jwks.json."""
        self.reload(force=False)
        return {"keys": list(self._public_jwks)}
