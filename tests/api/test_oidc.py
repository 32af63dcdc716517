"""OIDC login (authorization code + PKCE) against a real OpenID provider built with pyop.

pyop implements the provider's protocol (authorization requests, codes, PKCE
checks, token endpoint, signed ID tokens); this file only gives it HTTP routes
and a user who is already logged in at the provider.
"""

from __future__ import annotations

import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from Cryptodome.PublicKey import RSA
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwkest.jwk import RSAKey
from pydantic import ValidationError
from pyop.authz_state import AuthorizationState
from pyop.exceptions import BearerTokenError, InvalidAuthenticationRequest, OAuthError
from pyop.provider import Provider
from pyop.subject_identifier import HashBasedSubjectIdentifierFactory
from pyop.userinfo import Userinfo

from tests.support.api import ApiServer, Client, ServerFactory
from veza_api.settings import ApiSettings
from veza_local.services import free_port

CLIENT_ID, CLIENT_SECRET = "veza", "s3cret-for-tests"


@dataclass
class OpenIdProvider:
    issuer: str
    users: dict[str, dict[str, Any]]
    current: dict[str, str]  # who is "logged in" at the provider


def _tls_for_loopback(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1 (OIDC issuers must be https), and its file as the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veza test idp")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "idp.crt", directory / "idp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@pytest.fixture(scope="module")
async def provider_and_api(make_api: ServerFactory, tmp_path_factory: pytest.TempPathFactory,
                           ) -> AsyncIterator[tuple[OpenIdProvider, ApiServer]]:
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    tls, ca_file = _tls_for_loopback(tmp_path_factory.mktemp("idp"))
    api_port = free_port()
    redirect = f"http://127.0.0.1:{api_port}/api/v1/auth/oidc/callback"
    users = {
        "alice": {"email": f"alice-{uuid.uuid4().hex[:6]}@idp.test", "email_verified": True, "name": "Alice"},
        "mallory": {"email": "root@veza.test", "email_verified": False, "name": "Mallory"},
    }
    provider = Provider(
        RSAKey(key=RSA.generate(2048), alg="RS256", kid="idp-1"),
        {"issuer": issuer, "authorization_endpoint": f"{issuer}/authorize", "token_endpoint": f"{issuer}/token",
         "jwks_uri": f"{issuer}/jwks", "userinfo_endpoint": f"{issuer}/userinfo",
         "response_types_supported": ["code"], "subject_types_supported": ["public"],
         "id_token_signing_alg_values_supported": ["RS256"], "scopes_supported": ["openid", "email", "profile"],
         "token_endpoint_auth_methods_supported": ["client_secret_basic"],
         "code_challenge_methods_supported": ["S256"]},
        AuthorizationState(HashBasedSubjectIdentifierFactory("salt")),
        {CLIENT_ID: {"client_secret": CLIENT_SECRET, "redirect_uris": [redirect], "response_types": ["code"],
                     "token_endpoint_auth_method": "client_secret_basic"}},
        Userinfo(users),
    )
    idp = OpenIdProvider(issuer, users, {"user": "alice"})

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(provider.provider_configuration.to_dict())

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(provider.jwks)

    async def authorize(request: web.Request) -> web.Response:
        try:
            auth_req = provider.parse_authentication_request(request.query_string)
        except InvalidAuthenticationRequest as exc:
            return web.Response(status=400, text=str(exc))
        response = provider.authorize(auth_req, idp.current["user"])
        raise web.HTTPFound(response.request(auth_req["redirect_uri"], False))

    async def token(request: web.Request) -> web.Response:
        try:
            answer = provider.handle_token_request(await request.text(), dict(request.headers))
        except OAuthError as exc:
            return web.json_response({"error": exc.oauth_error, "error_description": str(exc)}, status=400)
        return web.json_response(answer.to_dict())

    async def userinfo(request: web.Request) -> web.Response:
        try:
            answer = provider.handle_userinfo_request(await request.text(), dict(request.headers))
        except (OAuthError, BearerTokenError) as exc:
            return web.json_response({"error": "invalid_token", "error_description": str(exc)}, status=401)
        return web.json_response(answer.to_dict())

    app = web.Application()
    app.router.add_get("/userinfo", userinfo)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server(ssl=tls)
    api_server = await make_api(oidc_issuer=issuer, oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET,
                                oidc_redirect_url=redirect, oidc_ca_file=str(ca_file), port=api_port)
    yield idp, api_server
    await server.close()


async def _follow(client: Client, url: str) -> str:
    """One redirect, the way a browser would follow it (trusting the test provider's certificate)."""
    async with client.session.get(url, allow_redirects=False, ssl=False) as resp:
        assert resp.status == 302, (resp.status, await resp.text())
        return resp.headers["Location"]


async def test_code_flow_with_pkce_logs_in_and_links_the_identity(
        provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    start = await client.get("/api/v1/auth/oidc/login")
    assert start.status == 302
    to_provider = start.headers["Location"]
    params = parse_qs(urlsplit(to_provider).query)
    assert to_provider.startswith(f"{idp.issuer}/authorize")
    assert params["code_challenge_method"] == ["S256"] and params["nonce"] and params["state"]

    back = await _follow(client, to_provider)
    callback = await client.get(urlsplit(back).path, **{k: v[0] for k, v in parse_qs(urlsplit(back).query).items()})
    assert callback.status == 200, callback.body
    me = await client.as_user(callback.body["access_token"]).get("/api/v1/me")
    assert me.body["email"] == idp.users["alice"]["email"] and me.body["display_name"] == "Alice"

    # The same code cannot be used twice (state is single use, and so is the code at the provider).
    replay = await client.get(urlsplit(back).path, **{k: v[0] for k, v in parse_qs(urlsplit(back).query).items()})
    assert replay.status == 400 and replay.body["error"]["code"] == "invalid_state"

    # A second login finds the same user through the linked identity.
    start = await client.get("/api/v1/auth/oidc/login")
    back = await _follow(client, start.headers["Location"])
    again = await client.get(urlsplit(back).path, **{k: v[0] for k, v in parse_qs(urlsplit(back).query).items()})
    assert again.status == 200 and again.body["user_id"] == callback.body["user_id"]


async def test_unverified_email_cannot_take_over_an_account(
        provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "mallory"
    start = await client.get("/api/v1/auth/oidc/login")
    back = await _follow(client, start.headers["Location"])
    reply = await client.get(urlsplit(back).path, **{k: v[0] for k, v in parse_qs(urlsplit(back).query).items()})
    assert reply.status == 403 and reply.body["error"]["code"] == "oidc_email_unverified"


async def test_tampered_callbacks_are_refused(provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    start = await client.get("/api/v1/auth/oidc/login")
    back = await _follow(client, start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    forged_code = await client.get("/api/v1/auth/oidc/callback", code="forged", state=query["state"])
    assert forged_code.status == 401 and forged_code.body["error"]["code"] == "oidc_failed"
    assert (await client.get("/api/v1/auth/oidc/callback", code=query["code"], state="forged")).status == 400
    assert (await client.get("/api/v1/auth/oidc/callback")).status == 400
    denied = await client.get("/api/v1/auth/oidc/callback", error="access_denied", state="x")
    assert denied.status == 401


async def test_the_provider_enforces_pkce(provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    """A code presented with another verifier (what an attacker who stole the code has) is refused."""
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    start = await client.get("/api/v1/auth/oidc/login")
    back = await _follow(client, start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    conn = await asyncpg.connect(server.database_url)
    try:
        await conn.execute("UPDATE oidc_requests SET code_verifier = $2 WHERE state = $1", query["state"], "x" * 64)
    finally:
        await conn.close()
    reply = await client.get("/api/v1/auth/oidc/callback", **query)
    assert reply.status == 401 and reply.body["error"]["code"] == "oidc_failed"


async def test_without_a_provider_oidc_is_not_found(client: Client) -> None:
    reply = await client.get("/api/v1/auth/oidc/login")
    assert reply.status == 404 and reply.body["error"]["code"] == "oidc_not_configured"


def test_an_issuer_over_plain_http_is_refused_at_start() -> None:
    """Discovery, keys and the code exchange come from the issuer: over HTTP anyone on the path could
    sign users in. The API refuses the configuration (`veza api` exits with "invalid configuration")."""
    with pytest.raises(ValidationError, match="https"):
        ApiSettings.from_env({"VEZA_OIDC_ISSUER": "http://idp.example.com", "VEZA_OIDC_CLIENT_ID": "veza"})
    assert ApiSettings.from_env({"VEZA_OIDC_ISSUER": "https://idp.example.com"}).oidc_issuer == "https://idp.example.com"
