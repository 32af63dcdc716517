"""Login through an external OpenID Connect provider: authorization code flow with PKCE.

GET /api/v1/auth/oidc/login redirects the browser to the provider with a fresh
`state`, `nonce` and S256 code challenge (kept server-side for ten minutes);
GET /api/v1/auth/oidc/callback exchanges the code with the verifier, checks the
ID token (signature from the provider's JWKS, issuer, audience, nonce, expiry),
finds or creates the Veza user and answers with Veza tokens.

A provider's subject is linked to a user once (`oidc_identities`); on first
login an existing account is linked only if the provider says the email is
verified, so an unverified address cannot take over someone's account.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import jwt
from aiohttp import web

from . import audit
from .accounts import open_session
from .context import api
from .errors import ApiError
from .settings import ApiSettings
from .users import create_user, find_by_email, normalise_email

REQUEST_TTL = timedelta(minutes=10)
METADATA_TTL = 3600.0


class OidcError(Exception):
    pass


class OidcClient:
    """The provider's metadata and keys (cached), the code exchange and ID-token checks."""

    def __init__(self, settings: ApiSettings) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self.client_secret = settings.oidc_client_secret
        self.redirect_url = settings.oidc_redirect_url or f"{settings.public_url.rstrip('/')}/api/v1/auth/oidc/callback"
        self.scopes = settings.oidc_scopes
        self._metadata: dict[str, Any] | None = None
        self._fetched = 0.0
        self._keys: jwt.PyJWKSet | None = None
        self._ssl = ssl.create_default_context(cafile=settings.oidc_ca_file) if settings.oidc_ca_file else True

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(ssl=self._ssl))

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session() as session, session.get(url) as resp:
                resp.raise_for_status()
                found = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"cannot read {url}: {exc}") from exc
        if not isinstance(found, dict):
            raise OidcError(f"{url} is not a JSON object")
        return found

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._fetched > METADATA_TTL:
            found = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if str(found.get("issuer", "")).rstrip("/") != self.issuer:
                raise OidcError("the provider's metadata names another issuer")
            self._metadata, self._fetched, self._keys = found, time.monotonic(), None
        return self._metadata

    async def _signing_key(self, kid: str | None) -> jwt.PyJWK:
        for refresh in (False, True):  # a kid we do not know yet: the provider rotated, fetch again
            if self._keys is None or refresh:
                self._keys = jwt.PyJWKSet.from_dict(await self._get_json((await self.metadata())["jwks_uri"]))
            keys = self._keys.keys
            if kid is None and len(keys) == 1:
                return keys[0]
            for key in keys:
                if key.key_id == kid:
                    return key
        raise OidcError("the ID token's key is not in the provider's JWKS")

    async def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_url,
                           "scope": self.scopes, "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"{(await self.metadata())['authorization_endpoint']}?{query}"

    async def exchange(self, code: str, verifier: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_url,
                "code_verifier": verifier, "client_id": self.client_id}
        headers = {}
        if self.client_secret:  # client_secret_basic (RFC 6749 2.3.1: each part form-urlencoded first)
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        endpoint = (await self.metadata())["token_endpoint"]
        try:
            async with self._session() as session, session.post(endpoint, data=form, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(body, dict):
                    raise OidcError(f"token endpoint answered {resp.status}: {body}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"token endpoint unreachable: {exc}") from exc
        return body

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint (many providers put email there, not in the ID token)."""
        endpoint = (await self.metadata()).get("userinfo_endpoint")
        if not endpoint or not access_token:
            return {}
        try:
            async with self._session() as session, \
                    session.get(endpoint, headers={"Authorization": f"Bearer {access_token}"}) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(body, dict):
                    raise OidcError(f"userinfo endpoint answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OidcError(f"userinfo endpoint unreachable: {exc}") from exc
        return body

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise OidcError("the ID token is not a JWT") from exc
        key = await self._signing_key(header.get("kid"))
        alg = header.get("alg")
        # Pinned to the key's own algorithm: never "none", never HMAC keyed with a public key.
        if alg in (None, "none") or alg.startswith("HS") or (key.algorithm_name and alg != key.algorithm_name):
            raise OidcError(f"ID token algorithm {alg!r} is not acceptable")
        try:
            claims: dict[str, Any] = jwt.decode(id_token, key.key, algorithms=[alg], audience=self.client_id,
                                                issuer=self.issuer, leeway=30,
                                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise OidcError(f"the ID token is invalid: {exc}") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError("the ID token's nonce does not match this login")
        return claims


def _client(request: web.Request) -> OidcClient:
    client = api(request).oidc
    if client is None:
        raise ApiError(404, "oidc_not_configured", "no OIDC provider is configured for this platform")
    return client


async def login(request: web.Request) -> web.Response:
    client = _client(request)
    ctx = api(request)
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    await ctx.pool.execute("DELETE FROM oidc_requests WHERE expires_at < now()")
    await ctx.pool.execute(
        "INSERT INTO oidc_requests (state, code_verifier, nonce, expires_at) VALUES ($1, $2, $3, $4)",
        state, verifier, nonce, datetime.now(UTC) + REQUEST_TTL)
    try:
        url = await client.authorization_url(state, nonce, verifier)
    except OidcError as exc:
        raise ApiError(502, "oidc_unavailable", "the identity provider cannot be reached") from exc
    raise web.HTTPFound(url)


async def callback(request: web.Request) -> web.Response:
    client = _client(request)
    ctx = api(request)
    q = request.query
    if "error" in q:
        raise ApiError(401, "oidc_denied", f"the identity provider refused: {q.get('error', '')[:100]}")
    code, state = q.get("code", ""), q.get("state", "")
    if not code or not state or len(code) > 2048 or len(state) > 256:
        raise ApiError(400, "invalid_callback", "code and state are required")
    pending = await ctx.pool.fetchrow(  # single use: the row goes whatever happens next
        "DELETE FROM oidc_requests WHERE state = $1 AND expires_at > now() RETURNING code_verifier, nonce", state)
    if pending is None:
        raise ApiError(400, "invalid_state", "this login attempt is unknown or expired; start again")
    try:
        tokens = await client.exchange(code, pending["code_verifier"])
        claims = await client.verify_id_token(str(tokens.get("id_token", "")), pending["nonce"])
        if "email" not in claims:
            extra = await client.userinfo(str(tokens.get("access_token", "")))
            if extra.get("sub") == claims["sub"]:  # OIDC Core 5.3.2: otherwise the answer must not be used
                claims = {**extra, **claims}
    except OidcError as exc:
        await audit.record(ctx.pool, "login.failure", request=request, method="oidc", reason=str(exc)[:300])
        raise ApiError(401, "oidc_failed", "the identity provider's answer could not be verified") from exc

    subject = str(claims["sub"])
    user_id = await ctx.pool.fetchval("SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2",
                                      client.issuer, subject)
    user = await ctx.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id) if user_id else None
    if user is None:
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is not True:
            raise ApiError(403, "oidc_email_unverified", "the identity provider gave no verified email")
        user = await find_by_email(ctx.pool, email)
        if user is None:
            name = str(claims.get("name") or email.split("@", 1)[0])[:100]
            await create_user(ctx.pool, email=email, display_name=name, password_hash=None,
                              bootstrap_admin=ctx.settings.bootstrap_admin_email)
            user = await find_by_email(ctx.pool, normalise_email(email))
            assert user is not None
            await audit.record(ctx.pool, "user.registered", actor=str(user["id"]), subject=str(user["id"]),
                               request=request, method="oidc")
        await ctx.pool.execute("INSERT INTO oidc_identities (issuer, subject, user_id) VALUES ($1, $2, $3)"
                               " ON CONFLICT DO NOTHING", client.issuer, subject, user["id"])
    if user["disabled"]:
        raise ApiError(401, "account_disabled", "this account is disabled")
    return web.json_response(await open_session(ctx, request, user, "oidc"))
