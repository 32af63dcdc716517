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

from tests.support.api import PASSWORD, ApiServer, Client, ServerFactory
from veza_api.settings import ApiSettings
from veza_core.auth import TokenIssuer
from veza_core.keys import KeySet
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
        "carol": {"email": f"carol-{uuid.uuid4().hex[:6]}@idp.test", "email_verified": True, "name": "Carol"},
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


PENDING_COOKIE = "veza_oidc_login"


async def _follow(client: Client, url: str) -> str:
    """One redirect, the way a browser would follow it (trusting the test provider's certificate)."""
    async with client.session.get(url, allow_redirects=False, ssl=False) as resp:
        assert resp.status == 302, (resp.status, await resp.text())
        return resp.headers["Location"]


async def _start(client: Client) -> tuple[str, str]:
    """A browser starting a login: the provider's URL, and the pending-login cookie it was given."""
    start = await client.get("/api/v1/auth/oidc/login")
    assert start.status == 302, start.body
    cookie = start.headers.get("Set-Cookie", f"{PENDING_COOKIE}=")
    if "SameSite" in cookie:
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/api/v1/auth/oidc/" in cookie, cookie
    return start.headers["Location"], cookie.split(";", 1)[0].split("=", 1)[1]


async def _callback(client: Client, back: str, cookie: str | None) -> Any:
    """The provider's redirect back, followed by a browser holding `cookie` (None: no cookie)."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    headers = {"Cookie": f"{PENDING_COOKIE}={cookie}"} if cookie else {}
    return await client.get(urlsplit(back).path, headers=headers, **query)


async def test_code_flow_with_pkce_logs_in_and_links_the_identity(
        provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    to_provider, cookie = await _start(client)
    assert cookie, "the pending login is kept in the browser"
    params = parse_qs(urlsplit(to_provider).query)
    assert to_provider.startswith(f"{idp.issuer}/authorize")
    assert params["code_challenge_method"] == ["S256"] and params["nonce"] and params["state"]

    back = await _follow(client, to_provider)
    callback = await _callback(client, back, cookie)
    assert callback.status == 200, callback.body
    assert f"{PENDING_COOKIE}=" in callback.headers["Set-Cookie"]  # the browser forgets the pending login
    me = await client.as_user(callback.body["access_token"]).get("/api/v1/me")
    assert me.body["email"] == idp.users["alice"]["email"] and me.body["display_name"] == "Alice"

    # The same callback cannot be used twice: the browser no longer holds the pending login, and the code
    # is single use at the provider.
    replay = await _callback(client, back, None)
    assert replay.status == 400 and replay.body["error"]["code"] == "invalid_state"
    assert (await _callback(client, back, cookie)).status == 401

    # A second login finds the same user through the linked identity.
    to_provider, cookie = await _start(client)
    again = await _callback(client, await _follow(client, to_provider), cookie)
    assert again.status == 200 and again.body["user_id"] == callback.body["user_id"]


async def test_a_callback_from_another_browser_is_refused(provider_and_api: tuple[OpenIdProvider, ApiServer]
                                                          ) -> None:
    """Login CSRF: an attacker starts a login, stops at the provider's redirect and makes the victim's browser
    follow it, which would log the victim in as the attacker. Without the cookie of the browser that started
    that login (none, or the victim's own for another login) the callback is refused."""
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    attackers_provider_url, _attackers_cookie = await _start(client)
    attackers_callback = await _follow(client, attackers_provider_url)
    _victims_provider_url, victims_cookie = await _start(client)
    for cookie in (None, victims_cookie, "not-a-signed-login"):
        reply = await _callback(client, attackers_callback, cookie)
        assert reply.status == 400 and reply.body["error"]["code"] == "invalid_state", (cookie, reply.body)


async def _rows(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {t["tablename"]: await conn.fetchval(f'SELECT count(*) FROM "{t["tablename"]}"')  # noqa: S608
                for t in tables}
    finally:
        await conn.close()


async def test_anonymous_login_starts_store_nothing(provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    _, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    before = await _rows(server.database_url)
    for _ in range(20):
        await _start(client)
    assert await _rows(server.database_url) == before


async def test_unverified_email_cannot_take_over_an_account(
        provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "mallory"
    to_provider, cookie = await _start(client)
    reply = await _callback(client, await _follow(client, to_provider), cookie)
    assert reply.status == 403 and reply.body["error"]["code"] == "oidc_email_unverified"


async def test_a_verified_oidc_login_takes_a_pre_registered_account_back(
        provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    """An attacker registered Carol's address with their own password before Carol first came by OIDC: her
    verified login keeps the account but clears that password and ends the attacker's sessions."""
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    carol = idp.users["carol"]["email"]
    squat = await client.register_and_login(carol)
    idp.current["user"] = "carol"
    to_provider, cookie = await _start(client)
    login = await _callback(client, await _follow(client, to_provider), cookie)
    assert login.status == 200 and login.body["user_id"] == squat["user_id"]
    assert (await client.post("/api/v1/auth/login", {"email": carol, "password": PASSWORD})).status == 401
    assert (await client.as_user(squat["access_token"]).get("/api/v1/me")).status == 401


async def test_tampered_callbacks_are_refused(provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    to_provider, cookie = await _start(client)
    back = await _follow(client, to_provider)
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    with_cookie = {"Cookie": f"{PENDING_COOKIE}={cookie}"}
    forged_code = await client.get("/api/v1/auth/oidc/callback", headers=with_cookie, code="forged",
                                   state=query["state"])
    assert forged_code.status == 401 and forged_code.body["error"]["code"] == "oidc_failed"
    forged_state = await client.get("/api/v1/auth/oidc/callback", headers=with_cookie, code=query["code"],
                                    state="forged")
    assert forged_state.status == 400
    assert (await client.get("/api/v1/auth/oidc/callback")).status == 400
    denied = await client.get("/api/v1/auth/oidc/callback", error="access_denied", state="x")
    assert denied.status == 401


async def test_the_provider_enforces_pkce(provider_and_api: tuple[OpenIdProvider, ApiServer]) -> None:
    """A code presented with another verifier (what an attacker who stole the code has) is refused: a pending
    login signed with the API's own key, for the right state, carrying another verifier."""
    idp, server = provider_and_api
    client = Client(server.client.base, server.client.session)
    idp.current["user"] = "alice"
    to_provider, _ = await _start(client)
    back = await _follow(client, to_provider)
    query = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    nonce = parse_qs(urlsplit(to_provider).query)["nonce"][0]
    forged = TokenIssuer(KeySet(server.keys_dir), issuer=server.settings.jwt_issuer).issue(
        "oidc-login", audience="veza-oidc-login", ttl=600, state=query["state"], nonce=nonce, verifier="x" * 64)
    reply = await _callback(client, back, forged)
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
