"""Helpers of the API tests: an HTTP client whose every answer is checked against
the served OpenAPI document, the key Secret writer, and the test constants.

The OpenAPI check: the operation exists, the status is documented, and a JSON
body matches its schema.
"""

from __future__ import annotations

import email
import functools
import json
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
from jsonschema import Draft202012Validator

from tests.support.waiting import wait_for
from veza_api.openapi import document
from veza_api.settings import ApiSettings
from veza_core.keys import secret_data

ISSUER = "https://veza.test"
ADMIN_EMAIL = "root@veza.test"
PASSWORD = "correct horse battery staple"


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in document()["paths"]:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        found.append((re.compile(f"^{pattern}$"), template))
    # Literal paths first: /auth/magic-link/verify must not be taken for a template.
    return sorted(found, key=lambda item: item[1].count("{"))


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    path = unquote(path.split("?", 1)[0])
    for pattern, template in _templates():
        if pattern.match(path):
            operation = document()["paths"][template].get(method.lower())
            return (template, operation) if operation else None
    return None


def check_response(method: str, path: str, status: int, body: Any) -> None:
    found = operation_for(method, path)
    if found is None:
        # Calls to routes that do not exist (hostile-input tests) must fail as such.
        assert status in (400, 404, 405), f"{method} {path} answered {status} but is not documented"
        return
    template, operation = found
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template}: status {status} is not documented ({body!r:.200})"
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    errors = sorted(Draft202012Validator({**schema, "components": document()["components"]}).iter_errors(body),
                    key=str)
    assert not errors, f"{method} {template} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


@dataclass
class Client:
    """An HTTP client for one API server; every answer is checked against the OpenAPI document."""

    base: str
    session: aiohttp.ClientSession
    token: str | None = None
    ip: str = field(default_factory=lambda: "10." + ".".join(str(secrets.randbelow(250)) for _ in range(3)))
    # The mailbox of the server's SMTP, when it has one: registrations are confirmed through it.
    inbox: Inbox | None = None

    def as_user(self, token: str | None) -> Client:
        return Client(self.base, self.session, token, self.ip, self.inbox)

    async def call(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None, check: bool = True, **params: str) -> Reply:
        sent = {"X-Forwarded-For": self.ip, **(headers or {})}
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        kwargs: dict[str, Any] = {"headers": sent, "params": params or None, "allow_redirects": False}
        if json_body is not None:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            raw = await resp.read()
            body: Any = json.loads(raw) if raw and resp.content_type == "application/json" else raw
            if check:
                check_response(method, path, resp.status, body)
            return Reply(resp.status, resp.headers, body)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, json_body=body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PUT", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def register_and_login(self, email: str | None = None, name: str = "Tester") -> dict[str, Any]:
        """Registers (or finds) the account and logs in with its password; when the server mails, a new
        account's address is confirmed with the link it was sent (a login), as its owner would."""
        email = email or f"user-{uuid.uuid4().hex[:10]}@veza.test"
        if self.inbox is not None:
            self.inbox.forget(email)
        made = await self.post("/api/v1/auth/register", {"email": email, "password": PASSWORD, "display_name": name})
        assert made.status == 202, made.body
        if self.inbox is not None:
            link = await self.inbox.link_for(email)
            if self.inbox.is_confirmation(email):  # an account registered earlier gets a login link instead
                login = await self.post("/api/v1/auth/magic-link/verify", {"token": link, "password": PASSWORD})
                assert login.status == 200, login.body
                return {**login.body, "email": email}
        login = await self.post("/api/v1/auth/login", {"email": email, "password": PASSWORD})
        assert login.status == 200, login.body
        return {**login.body, "email": email}


@dataclass
class ApiServer:
    client: Client
    settings: ApiSettings
    keys_dir: Path
    database_url: str
    # Stops the server before the session ends (one whose dependencies a test takes away would otherwise keep
    # retrying them for the rest of the session); the factory stops every server at the end anyway.
    stop: Callable[[], Awaitable[None]]


ServerFactory = Callable[..., Awaitable[ApiServer]]


def write_keys(directory: Path, keys: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in secret_data(keys).items():
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)  # atomic, like a Secret volume's symlink swap


class Inbox:
    """An aiosmtpd handler keeping every mail the API sends (magic links)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls this hook by name
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def latest(self, address: str) -> Message | None:
        return next((m for m in reversed(self.messages) if m["To"] == address), None)

    @staticmethod
    def text(message: Message) -> str:
        return message.get_payload(decode=True).decode()  # type: ignore[union-attr]

    def is_confirmation(self, address: str) -> bool:
        """Whether the latest mail to `address` confirms a registration (rather than logging in)."""
        message = self.latest(address)
        return message is not None and "&confirm=1" in self.text(message)

    def forget(self, address: str) -> None:
        self.messages = [m for m in self.messages if m["To"] != address]

    def latest_link(self, address: str) -> str | None:
        for message in reversed(self.messages):
            if message["To"] == address:
                body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
                found = re.search(r"#token=([A-Za-z0-9_\-]+)", body)
                assert found, body
                return found.group(1)
        return None

    async def link_for(self, address: str) -> str:
        return await wait_for(lambda: self.latest_link(address), timeout=5, message=f"a mail for {address}")
