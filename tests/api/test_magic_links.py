"""Magic links go out over real SMTP (aiosmtpd), work once, and expire."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiosmtpd.controller import Controller

from tests.support.api import ApiServer, Client, Inbox, ServerFactory


@pytest.fixture(scope="module")
async def mail_api(make_api: ServerFactory, mailbox: tuple[Controller, Inbox]) -> ApiServer:
    controller, _ = mailbox
    return await make_api(smtp_host="127.0.0.1", smtp_port=controller.port, smtp_from="login@veza.test",
                          public_url="https://veza.test")


async def test_link_logs_in_once_and_creates_the_account(mail_api: ApiServer,
                                                        mailbox: tuple[Controller, Inbox]) -> None:
    _, inbox = mailbox
    client = Client(mail_api.client.base, mail_api.client.session)
    address = f"new-{uuid.uuid4().hex[:8]}@veza.test"
    sent = await client.post("/api/v1/auth/magic-link", {"email": address.upper()})
    assert sent.status == 202
    token = await inbox.link_for(address)
    message = next(m for m in reversed(inbox.messages) if m["To"] == address)
    assert message["From"] == "login@veza.test" and "https://veza.test/login/magic#token=" in str(message)

    login = await client.post("/api/v1/auth/magic-link/verify", {"token": token})
    assert login.status == 200
    me = await client.as_user(login.body["access_token"]).get("/api/v1/me")
    assert me.body["email"] == address
    again = await client.post("/api/v1/auth/magic-link/verify", {"token": token})
    assert again.status == 401 and again.body["error"]["code"] == "invalid_magic_link"
    assert (await client.post("/api/v1/auth/magic-link/verify", {"token": "forged"})).status == 401


async def test_expired_links_are_refused(mail_api: ApiServer, mailbox: tuple[Controller, Inbox]) -> None:
    _, inbox = mailbox
    client = Client(mail_api.client.base, mail_api.client.session)
    address = f"late-{uuid.uuid4().hex[:8]}@veza.test"
    assert (await client.post("/api/v1/auth/magic-link", {"email": address})).status == 202
    token = await inbox.link_for(address)
    conn = await asyncpg.connect(mail_api.database_url)
    try:
        await conn.execute("UPDATE magic_links SET expires_at = now() - interval '1 second' WHERE email = $1", address)
    finally:
        await conn.close()
    assert (await client.post("/api/v1/auth/magic-link/verify", {"token": token})).status == 401


async def test_without_smtp_the_endpoint_says_so(make_api: ServerFactory) -> None:
    client = (await make_api(smtp_host=None)).client
    reply = await client.post("/api/v1/auth/magic-link", {"email": "someone@veza.test"})
    assert reply.status == 503 and reply.body["error"]["code"] == "mail_unavailable"
    assert (await client.post("/api/v1/auth/magic-link", {"email": "not an email"})).status == 422
