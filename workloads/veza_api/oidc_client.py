"""The OpenID Connect provider as the API sees it: its metadata and keys (cached),
the authorization URL with a PKCE challenge, the code exchange, userinfo, and the
ID-token checks. Built once from the settings and kept on the context.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import jwt

from .settings import ApiSettings

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
