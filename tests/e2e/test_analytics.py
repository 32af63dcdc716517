"""Analytics on the cluster: what clients do through the front door reaches the admin analytics routes.

The API pods' analytics consumer (docs/analytics.md) reads the room's and the channel's JetStream events; an
admin sees the messages sent, the chat connections and the listening time a minute later at most.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
from tests.support.e2e import Account, Platform, connect_chat
from tests.support.waiting import wait_for


async def _admin(platform: Platform, session: aiohttp.ClientSession) -> Account:
    """A platform admin: an account the platform engineer promotes in the database (docs/api.md)."""
    account = await Account(platform, "Root").register(session)
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute("UPDATE users SET roles = '{admin}', email_verified_at = now() WHERE id = $1",
                           uuid.UUID(account.user_id))
    finally:
        await conn.close()
    return account


async def _analytics(platform: Platform, session: aiohttp.ClientSession, admin: Account, route: str) -> Any:
    async with session.get(platform.url(f"/api/v1/admin/analytics/{route}"), headers={
            **platform.headers, "Authorization": f"Bearer {admin.access_token}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_messages_connections_and_listening_reach_the_admin_routes(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        admin = await _admin(platform, session)

        async def messages() -> int:
            series = (await _analytics(platform, session, admin, "messages?room=general"))["series"]
            return sum(point["messages"] for point in series)

        async def listening() -> float:
            series = (await _analytics(platform, session, admin, "listening?channel=radio"))["series"]
            return sum(point["minutes"] for point in series)

        before, listened = await messages(), await listening()

        # A listener of the progressive stream for a few of the stream workers' 5 s count snapshots.
        async def listen() -> None:
            async with session.get(platform.url("/stream/radio/mp3-128"), headers=platform.headers) as r:
                assert r.status == 200
                async for _ in r.content.iter_any():
                    pass

        listener = asyncio.create_task(listen())
        client = await connect_chat(platform, await admin.service_token(session, "veza-chat"))
        try:
            for i in range(3):
                await client.send({"type": "send", "cid": uuid.uuid4().hex, "text": f"counted {i}"})
                await client.expect("ack")

            async def counted() -> bool:
                return await messages() >= before + 3

            async def heard() -> bool:
                return await listening() > listened

            await wait_for(counted, timeout=90, interval=2, message="the three messages counted")
            await wait_for(heard, timeout=90, interval=2, message="the listener's time counted")

            async def connected() -> bool:  # the chat workers' next 5 s snapshot counts this client
                peaks = (await _analytics(platform, session, admin, "peaks?kind=connections"))["peaks"]
                return any(p["scope"] == "general" and p["peak"] >= 1 for p in peaks)

            await wait_for(connected, timeout=60, interval=2, message="the chat connection counted in the peak")
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await client.close()
        # Not for everyone: a user who is no admin is refused.
        user = await Account(platform, "Bea").register(session)
        async with session.get(platform.url("/api/v1/admin/analytics/messages"), headers={
                **platform.headers, "Authorization": f"Bearer {user.access_token}"}) as r:
            assert r.status == 403, await r.text()
