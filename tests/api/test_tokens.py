"""JWKS, key rotation from the mounted Secret, service tokens for chat and stream, forged tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.api import ISSUER, ApiServer, Client, ServerFactory, write_keys
from tests.support.waiting import wait_for
from veza_core.auth import AUDIENCE_CHAT, AUDIENCE_STREAM, TokenError, TokenVerifier
from veza_core.keys import KeySet, generate_signing_key


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_jwks_serves_the_public_keys(client: Client, api_server: ApiServer) -> None:
    reply = await client.get("/.well-known/jwks.json")
    assert reply.status == 200
    [key] = reply.body["keys"]
    assert key["alg"] == "EdDSA" and key["kty"] == "OKP" and "d" not in key
    assert key == KeySet(api_server.keys_dir).jwks()["keys"][0]


async def test_rotation_keeps_old_tokens_valid_during_the_overlap(make_api: ServerFactory) -> None:
    server = await make_api()
    client, admin_email = server.client, "root@veza.test"
    old_tokens = await client.register_and_login(admin_email)
    old_kid = jwt.get_unverified_header(old_tokens["access_token"])["kid"]
    old_key = json.loads((server.keys_dir / "signing-keys.json").read_text())["keys"][0]

    # A rotation's activation stage as the operator writes it (after publishing the new key): the new key
    # first, the old one kept for verification (the stages: tests/api/test_key_rotation.py).
    new_key = generate_signing_key()
    write_keys(server.keys_dir, [new_key, old_key])
    pair = (await client.post("/api/v1/auth/login", {"email": admin_email,
                                                      "password": "correct horse battery staple"})).body

    async def signed_with_the_new_key() -> dict[str, Any] | None:
        nonlocal pair
        if jwt.get_unverified_header(pair["access_token"])["kid"] == new_key["kid"]:
            return pair
        pair = (await client.post("/api/v1/auth/refresh", {"refresh_token": pair["refresh_token"]})).body
        return None

    # KeySet re-reads the files at most every few seconds: wait for the signer to switch.
    fresh = await wait_for(signed_with_the_new_key, timeout=8, interval=0.5,
                           message="the API signing with the rotated key")
    assert (await client.get("/.well-known/jwks.json")).body["keys"][0]["kid"] == new_key["kid"]
    assert {k["kid"] for k in (await client.get("/.well-known/jwks.json")).body["keys"]} == {old_kid, new_key["kid"]}
    assert (await client.as_user(old_tokens["access_token"]).get("/api/v1/me")).status == 200
    assert (await client.as_user(fresh["access_token"]).get("/api/v1/me")).status == 200

    admin = client.as_user(fresh["access_token"])
    rotations = (await admin.get("/api/v1/admin/audit", event="key.rotated")).body["entries"]
    assert new_key["kid"] in {e["subject"] for e in rotations}

    # End of the overlap: the old key is removed; its tokens stop working.
    write_keys(server.keys_dir, [new_key])

    async def old_token_refused() -> bool:
        return (await client.as_user(old_tokens["access_token"]).get("/api/v1/me")).status == 401

    await wait_for(old_token_refused, timeout=8, interval=0.5, message="a token of a removed key refused")


async def test_service_tokens_carry_roles_for_chat_and_stream(client: Client, admin: Client,
                                                              api_server: ApiServer) -> None:
    user = await client.register_and_login()
    uid = user["user_id"]
    assert (await admin.put("/api/v1/admin/rooms/general", {"title": "General"})).status in (200, 201)
    assert (await admin.put("/api/v1/admin/channels/radio", {"title": "Radio"})).status in (200, 201)
    assert (await admin.put(f"/api/v1/rooms/general/members/{uid}", {"role": "moderator"})).status == 204
    assert (await admin.put(f"/api/v1/channels/radio/members/{uid}", {"role": "broadcaster"})).status == 204

    me = client.as_user(user["access_token"])
    keys = KeySet(api_server.keys_dir)
    chat = await me.post("/api/v1/auth/service-token", {"audience": AUDIENCE_CHAT})
    assert chat.status == 200 and chat.body["expires_in"] <= 300
    principal = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE_CHAT).verify(chat.body["token"])
    assert principal.subject == uid and principal.resource_role("room", "general") == "moderator"
    assert principal.resource_role("channel", "radio") == "broadcaster" and not principal.is_admin
    # A chat token is not a stream token, nor an API token.
    for audience in (AUDIENCE_STREAM, "veza-api"):
        try:
            TokenVerifier(keys, issuer=ISSUER, audience=audience).verify(chat.body["token"])
            raise AssertionError("audience not enforced")
        except TokenError as err:
            assert err.code == "token_audience"
    assert (await client.as_user(chat.body["token"]).get("/api/v1/me")).status == 401

    stream = await admin.post("/api/v1/auth/service-token", {"audience": AUDIENCE_STREAM})
    assert TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE_STREAM).verify(stream.body["token"]).is_admin
    bad = await me.post("/api/v1/auth/service-token", {"audience": "veza-api"})
    assert bad.status == 422 and bad.body["error"]["code"] == "invalid_audience"


async def test_forged_tokens_are_rejected(client: Client, api_server: ApiServer) -> None:
    user = await client.register_and_login()
    header = jwt.get_unverified_header(user["access_token"])
    claims = jwt.decode(user["access_token"], options={"verify_signature": False})
    public = (await client.get("/.well-known/jwks.json")).body["keys"][0]

    none_token = f"{_b64({'alg': 'none', 'kid': header['kid']})}.{_b64({**claims, 'roles': ['admin']})}."
    signing_input = f"{_b64({'alg': 'HS256', 'kid': header['kid']})}.{_b64({**claims, 'roles': ['admin']})}"
    mac = hmac.new(json.dumps(public).encode(), signing_input.encode(), hashlib.sha256).digest()
    hs_token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    rs_token = jwt.encode(claims, other, algorithm="RS256", headers={"kid": header["kid"]})
    tampered = user["access_token"][:-4] + ("AAAA" if not user["access_token"].endswith("AAAA") else "BBBB")

    for forged, code in ((none_token, "token_algorithm"), (hs_token, "token_algorithm"),
                         (rs_token, "token_algorithm"), (tampered, "token_invalid"), ("garbage", "token_malformed")):
        reply = await client.as_user(forged).get("/api/v1/me")
        assert reply.status == 401 and reply.body["error"]["code"] == code, (code, reply.body)
        assert "Bearer" in reply.headers["WWW-Authenticate"]
