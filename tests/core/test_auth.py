"""Token verification refuses every forgery an attacker controls."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from veza_core.auth import AUDIENCE_CHAT, Principal, TokenError, TokenIssuer, TokenVerifier
from veza_core.keys import KeySet, generate_signing_key, public_jwk, secret_data

ISSUER = "https://veza.example"


@pytest.fixture
def signing_key() -> dict:
    return generate_signing_key()


@pytest.fixture
def keys(signing_key: dict) -> KeySet:
    return KeySet.from_private_keys([signing_key])


def verifier(keys: KeySet, audience: str = AUDIENCE_CHAT) -> TokenVerifier:
    return TokenVerifier(keys, issuer=ISSUER, audience=audience)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**over: object) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE_CHAT, "sub": "u1", "iat": now, "exp": now + 60, **over}


def test_valid_token_round_trip(keys: KeySet) -> None:
    token = TokenIssuer(keys, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT, name="Ada", roles=["admin"],
                                                   res={"room/general": "moderator"})
    principal = verifier(keys).verify(token)
    assert principal == Principal(subject="u1", name="Ada", roles=frozenset({"admin"}))
    assert principal.is_admin and principal.resource_role("room", "general") == "moderator"
    assert principal.resource_role("room", "other") is None


def test_alg_none_is_rejected(keys: KeySet, signing_key: dict) -> None:
    forged = f"{b64({'alg': 'none', 'kid': signing_key['kid']})}.{b64(claims())}."
    with pytest.raises(TokenError) as err:
        verifier(keys).verify(forged)
    assert err.value.code == "token_algorithm"


def test_hs256_signed_with_the_public_key_is_rejected(keys: KeySet, signing_key: dict) -> None:
    # The classic confusion attack: HMAC keyed with the (public) verification key.
    # pyjwt refuses to sign that, so the token is built by hand.
    public = json.dumps(public_jwk(signing_key)).encode()
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': signing_key['kid']})}.{b64(claims())}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(TokenError) as err:
        verifier(keys).verify(forged)
    assert err.value.code == "token_algorithm"


def test_rs256_token_against_an_eddsa_key_is_rejected(keys: KeySet, signing_key: dict) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    forged = jwt.encode(claims(), pem, algorithm="RS256", headers={"kid": signing_key["kid"]})
    with pytest.raises(TokenError) as err:
        verifier(keys).verify(forged)
    assert err.value.code == "token_algorithm"


def test_token_from_an_unknown_key_is_rejected(keys: KeySet) -> None:
    stranger = KeySet.from_private_keys([generate_signing_key()])
    token = TokenIssuer(stranger, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT)
    with pytest.raises(TokenError) as err:
        verifier(keys).verify(token)
    assert err.value.code == "token_key"


@pytest.mark.parametrize(("override", "code"), [
    ({"exp": int(time.time()) - 120}, "token_expired"),
    ({"aud": "veza-stream"}, "token_audience"),
    ({"iss": "https://evil.example"}, "token_issuer"),
])
def test_wrong_claims_are_rejected(keys: KeySet, signing_key: dict, override: dict, code: str) -> None:
    kid, key = keys.active_signing_key()
    token = jwt.encode(claims(**override), key.key, algorithm="EdDSA", headers={"kid": kid})
    with pytest.raises(TokenError) as err:
        verifier(keys).verify(token)
    assert err.value.code == code


def test_missing_subject_is_rejected(keys: KeySet) -> None:
    kid, key = keys.active_signing_key()
    body = claims()
    del body["sub"]
    with pytest.raises(TokenError):
        verifier(keys).verify(jwt.encode(body, key.key, algorithm="EdDSA", headers={"kid": kid}))


def test_garbage_is_rejected(keys: KeySet) -> None:
    for junk in ["", "abc", "a.b.c", "\x00" * 10]:
        with pytest.raises(TokenError):
            verifier(keys).verify(junk)


def test_rotation_through_mounted_files(tmp_path: Path) -> None:
    old, new = generate_signing_key(), generate_signing_key()
    for name, value in secret_data([old]).items():
        (tmp_path / name).write_text(value)
    keys = KeySet(tmp_path)
    old_token = TokenIssuer(keys, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT)

    # Rotate: the new key signs, the old one still verifies during the overlap.
    for name, value in secret_data([new, old]).items():
        (tmp_path / name).write_text(value)
    new_token = TokenIssuer(KeySet(tmp_path), issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT)
    assert jwt.get_unverified_header(new_token)["kid"] == new["kid"]
    v = verifier(keys)
    assert v.verify(new_token).subject == "u1", "an unknown kid triggers a reload of the mounted keys"
    assert v.verify(old_token).subject == "u1"


def test_a_verified_token_is_remembered_without_a_second_signature_check(
        keys: KeySet, monkeypatch: pytest.MonkeyPatch) -> None:
    token = TokenIssuer(keys, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT, name="Ada")
    v = verifier(keys)
    decodes = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: decodes.append(1) or real_decode(*a, **kw))
    first, second = v.verify(token), v.verify(token)
    assert first is second and first.name == "Ada"
    assert len(decodes) == 1
    # Another token (one character changed: a forged signature) is not a hit: it is checked, and refused.
    forged = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(TokenError):
        v.verify(forged)
    assert len(decodes) == 2


def test_a_remembered_token_is_refused_once_it_expires(keys: KeySet) -> None:
    v = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE_CHAT, leeway=0)
    token = TokenIssuer(keys, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT, ttl=1)
    assert v.verify(token).subject == "u1"
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(TokenError) as refused:
        v.verify(token)
    assert refused.value.code == "token_expired"


def test_a_remembered_token_is_refused_once_its_key_leaves_the_key_set(tmp_path: Path) -> None:
    old, new = generate_signing_key(), generate_signing_key()
    for name, value in secret_data([old]).items():
        (tmp_path / name).write_text(value)
    keys = KeySet(tmp_path, recheck_seconds=0)
    token = TokenIssuer(keys, issuer=ISSUER).issue("u1", audience=AUDIENCE_CHAT)
    v = verifier(keys)
    assert v.verify(token).subject == "u1"
    # The rotation's overlap ends: only the new key is left in the mounted files.
    for name, value in secret_data([new]).items():
        (tmp_path / name).write_text(value)
    with pytest.raises(TokenError) as refused:
        v.verify(token)
    assert refused.value.code == "token_key"


def test_the_cache_is_bounded(keys: KeySet) -> None:
    v = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE_CHAT, cache_size=3)
    issuer = TokenIssuer(keys, issuer=ISSUER)
    tokens = [issuer.issue(f"u{i}", audience=AUDIENCE_CHAT) for i in range(5)]
    for token in tokens:
        v.verify(token)
    assert list(v._verified) == tokens[2:]
    v.verify(tokens[2])  # used again: now the most recent
    assert list(v._verified) == [tokens[3], tokens[4], tokens[2]]
