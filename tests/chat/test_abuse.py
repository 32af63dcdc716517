"""Hostile input: bad frames, floods, forged tokens; room limits and moderation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.support.chat import FAST_SPEC, ISSUER, Chat, ChatClient
from tests.support.waiting import wait_for


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def handshake_status(chat: Chat, url: str, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url.replace("/ws", "/history"), headers={"Authorization": f"Bearer {token}"}) as resp:
            rest = (resp.status, (await resp.json())["error"]["code"])
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(url, protocols=("veza.chat.v1", f"bearer.{token}"))
        assert err.value.status == rest[0], "the socket and REST refuse alike"
    return rest


async def test_bad_frames_get_error_frames_and_the_worker_survives(chat: Chat) -> None:
    a = await chat.worker({"limits": {"maxMessageBytes": 100}})
    c = await chat.connect(a, "alice")
    cases = [("{not json", "bad_json"), ("[1,2]", "bad_frame"), ('{"type":"dance"}', "unknown_type"),
             ('{"type":"send","text":"no cid"}', "bad_frame"), ('{"type":"send","cid":"x","text":5}', "bad_frame"),
             ('{"type":"read","seq":-1}', "bad_frame"), ('{"type":"history","limit":100000}', "bad_frame"),
             ('{"type":"moderate","action":"nuke","user":"u"}', "bad_frame"), ('"just a string"', "bad_frame"),
             ('{"type":"edit","cid":"e","seq":true,"text":"t"}', "bad_frame")]
    for raw, code in cases:
        await c.ws.send_str(raw)
        assert (await c.expect("error"))["code"] == code, raw
    await c.ws.send_bytes(bytes(range(256)))
    assert (await c.expect("error"))["code"] == "binary_frame"
    await c.send({"type": "send", "cid": "big", "text": "é" * 51})
    assert (await c.expect("error", cid="big"))["code"] == "message_too_large"
    await c.send({"type": "send", "cid": "fine", "text": "still here"})
    await c.expect("ack", cid="fine")
    # A frame beyond the socket's size limit closes it with 1009.
    await c.ws.send_str(json.dumps({"type": "send", "cid": "huge", "text": "x" * 10_000}))
    assert await c.recv() is None and c.close_code == 1009
    # A flood gets error frames, then a policy close.
    f = await chat.connect(a, "flooder")
    for _ in range(400):
        await f.ws.send_str('{"type":"ping"}')
    codes = []
    while (frame := await f.recv()) is not None:
        codes.append(frame.get("code"))
    assert "flood" in codes and f.close_code == 1008
    # The worker is fine.
    again = await chat.connect(a, "bob")
    await again.send({"type": "send", "cid": "after", "text": "ok"})
    assert (await again.expect("ack", cid="after"))["seq"] == 2


async def test_a_deeply_nested_frame_is_refused_and_the_worker_survives(chat: Chat) -> None:
    # A few kilobytes of brackets exhausted the JSON parser's stack: an uncaught RecursionError.
    a = await chat.worker({})
    c = await chat.connect(a, "alice")
    for raw in ("[" * 3000 + "]" * 3000, '{"type":"send","cid":"n","text":' + "[" * 3000 + "]" * 3000 + "}"):
        await c.ws.send_str(raw)
        assert (await c.expect("error"))["code"] == "bad_json"
    await c.send({"type": "send", "cid": "fine", "text": "still here"})
    await c.expect("ack", cid="fine")


async def test_forged_and_misdirected_tokens_are_rejected(chat: Chat) -> None:
    a = await chat.worker()
    url = f"{a.url}/chat/{chat.room}/ws"
    jwks = json.loads((chat.keys_dir / "jwks.json").read_text())["keys"][0]
    kid = jwks["kid"]
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "veza-chat", "sub": "mallory", "iat": now, "exp": now + 60}
    alg_none = f"{b64({'alg': 'none', 'kid': kid})}.{b64(claims)}."
    signing_input = f"{b64({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{b64(claims)}"
    public_bytes = json.dumps(jwks).encode()
    hs256 = signing_input + "." + b64(hmac.new(public_bytes, signing_input.encode(), hashlib.sha256).digest())
    expired = chat.issuer.issue("mallory", audience="veza-chat", ttl=-60)
    wrong_aud = chat.issuer.issue("mallory", audience="veza-api")
    other_room = chat.token("mallory", room="another-room")
    assert await handshake_status(chat, url, alg_none) == (401, "token_algorithm")
    assert await handshake_status(chat, url, hs256) == (401, "token_algorithm")
    assert await handshake_status(chat, url, expired) == (401, "token_expired")
    assert await handshake_status(chat, url, wrong_aud) == (401, "token_audience")
    assert await handshake_status(chat, url, "garbage") == (401, "token_malformed")
    assert await handshake_status(chat, url, other_room) == (403, "token_room")
    assert (await chat.connect(a, "ok", room=chat.room)).welcome["user"]["id"] == "ok"


async def test_wrong_issuer_and_private_room_membership(chat: Chat) -> None:
    spec = {"visibility": "private", "members": [{"user": "owner1", "role": "owner"}],
            "limits": {"messagesPerMinute": 10000}}
    a = await chat.worker(spec)
    url = f"{a.url}/chat/{chat.room}/ws"
    from veza_core.auth import TokenIssuer
    foreign = TokenIssuer(chat.issuer.keys, issuer="https://evil.example").issue("owner1", audience="veza-chat")
    assert await handshake_status(chat, url, foreign) == (401, "token_issuer")
    assert await handshake_status(chat, url, chat.token("stranger")) == (403, "not_member")
    other_grant = chat.token("stranger", res={"room/elsewhere": "member"})
    assert await handshake_status(chat, url, other_grant) == (403, "not_member")
    owner = await chat.connect(a, "owner1")
    assert owner.welcome["user"]["role"] == "owner" and owner.welcome["room"]["visibility"] == "private"
    granted = await chat.connect(a, "guest", res={f"room/{chat.room}": "member"})
    assert granted.welcome["user"]["role"] == "member"
    admin = await chat.connect(a, "root", roles=["admin"])
    assert admin.welcome["user"]["role"] == "admin"


async def test_rate_limit_slow_mode_blocked_words_mentions_and_max_members(chat: Chat) -> None:
    spec = {"limits": {"messagesPerMinute": 6, "maxMembers": 2},
            "moderation": {"blockedWords": ["spam"], "maxMentions": 2}}
    a = await chat.worker(spec)
    c = await chat.connect(a, "alice")
    await c.send({"type": "send", "cid": "1", "text": "Buy SPAM now"})
    assert (await c.expect("error", cid="1"))["code"] == "blocked_word"
    await c.send({"type": "send", "cid": "2", "text": "@a @b @c hi"})
    assert (await c.expect("error", cid="2"))["code"] == "too_many_mentions"
    await c.send({"type": "send", "cid": "3", "text": "hello"})
    await c.expect("ack", cid="3")
    await c.send({"type": "send", "cid": "4", "text": "again"})
    limited = await c.expect("error", cid="4")
    assert limited["code"] == "rate_limited" and 5 < limited["retry_after"] <= 10.5
    await chat.connect(a, "bob")
    await chat.connect(a, "alice")  # already present: a second tab does not count
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await chat.connect(a, "carol")
    assert err.value.status == 403

    b = await chat.worker({"limits": {"messagesPerMinute": 10000}, "moderation": {"slowModeSeconds": 30}})
    s = await chat.connect(b, "sam")
    await s.send({"type": "send", "cid": "s1", "text": "one"})
    await s.expect("ack", cid="s1")
    await s.send({"type": "send", "cid": "s2", "text": "two"})
    assert (await s.expect("error", cid="s2"))["code"] == "slow_mode"


async def test_moderation_mute_kick_ban_across_workers(chat: Chat) -> None:
    a, b = await chat.worker(), await chat.worker()
    mod = await chat.connect(a, "mia", res={f"room/{chat.room}": "moderator"})
    troll = await chat.connect(b, "troll")
    await troll.send({"type": "moderate", "action": "ban", "user": "mia"})
    assert (await troll.expect("error"))["code"] == "forbidden"

    await mod.send({"type": "moderate", "action": "mute", "user": "troll", "seconds": 60, "reason": "calm down"})
    await troll.expect("moderation", action="mute", user="troll")
    await troll.send({"type": "send", "cid": "m", "text": "hi"})
    assert (await troll.expect("error", cid="m"))["code"] == "muted"
    await mod.send({"type": "moderate", "action": "unmute", "user": "troll"})
    await troll.expect("moderation", action="unmute")
    await troll.send({"type": "send", "cid": "m2", "text": "sorry"})
    await troll.expect("ack", cid="m2")

    await mod.send({"type": "moderate", "action": "kick", "user": "troll"})
    await _closed(troll)
    assert troll.close_code == 4001
    troll = await chat.connect(b, "troll")  # a kick is not a ban

    await mod.send({"type": "moderate", "action": "ban", "user": "troll"})
    await _closed(troll)
    assert troll.close_code == 4003
    for w in (a, b):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await chat.connect(w, "troll")
        assert err.value.status == 403
    await mod.send({"type": "moderate", "action": "unban", "user": "troll"})
    await mod.expect("moderation", action="unban")

    async def admitted_on_b() -> ChatClient | None:
        """The unban reaches b as a signal: until then, b still refuses."""
        try:
            return await chat.connect(b, "troll")
        except aiohttp.WSServerHandshakeError:
            return None

    again = await wait_for(admitted_on_b, timeout=5, message="troll admitted on b after the unban")
    assert again.welcome["user"]["id"] == "troll"


async def test_moderators_cannot_act_above_their_rank_nor_edit_others(chat: Chat) -> None:
    """The REST rules, over the WebSocket too: a moderator could ban the room's owner or an admin,
    and rewrite anyone's words."""
    a = await chat.worker({"members": [{"user": "olga", "role": "owner"}], **FAST_SPEC})
    mod = await chat.connect(a, "mia", res={f"room/{chat.room}": "moderator"})
    other_mod = await chat.connect(a, "max", res={f"room/{chat.room}": "moderator"})
    admin = await chat.connect(a, "root", roles=["admin"])
    writer = await chat.connect(a, "wes")
    for target in ("olga", "max", "root"):  # the owner offline (the spec says so), a peer, an admin online
        await mod.send({"type": "moderate", "action": "ban", "user": target})
        assert (await mod.expect("error"))["code"] == "forbidden", target
    await other_mod.send({"type": "moderate", "action": "mute", "user": "mia", "seconds": 60})
    assert (await other_mod.expect("error"))["code"] == "forbidden"

    await writer.send({"type": "send", "cid": "w1", "text": "my words"})
    seq = (await writer.expect("ack", cid="w1"))["seq"]
    await mod.send({"type": "edit", "cid": "e1", "seq": seq, "text": "someone else's words"})
    assert (await mod.expect("error", cid="e1"))["code"] == "forbidden"
    await mod.send({"type": "delete", "cid": "d1", "seq": seq})
    await mod.expect("ack", cid="d1")  # removing is a moderator's job

    # Down the ranks it works, and an admin can be neither banned nor refused for a ban.
    await admin.send({"type": "moderate", "action": "mute", "user": "mia", "seconds": 60})
    await mod.expect("moderation", action="mute", user="mia")
    await mod.send({"type": "moderate", "action": "ban", "user": "wes"})
    await _closed(writer)
    assert writer.close_code == 4003


async def test_a_socket_closes_when_its_token_expires(chat: Chat) -> None:
    """A token let a socket in for as long as it stayed open: an expired session kept listening."""
    a = await chat.worker()
    short = await chat.connect(a, "sam", token=chat.token("sam", ttl=2))
    lasting = await chat.connect(a, "lea")
    started = time.monotonic()
    await asyncio.wait_for(_closed(short), timeout=10)
    assert short.close_code == 4004 and time.monotonic() - started < 5
    await lasting.send({"type": "send", "cid": "still", "text": "here"})
    await lasting.expect("ack", cid="still")


async def _closed(client: ChatClient) -> None:
    while await client.recv() is not None:
        pass


async def history_after(client: ChatClient, after: int = 0) -> list[dict[str, Any]]:
    ref = f"h{len(client.frames)}"
    await client.send({"type": "history", "ref": ref, "after": after})
    return list((await client.expect("history", ref=ref))["events"])


async def test_retention_trims_history(chat: Chat) -> None:
    settings = chat.settings({"retention": {"maxMessages": 5}, "limits": {"messagesPerMinute": 100000}},
                             chat_retention_interval_seconds=0.5)
    a = await chat.serve(settings)
    c = await chat.connect(a, "alice")
    for i in range(12):
        await c.send({"type": "send", "cid": str(i), "text": str(i)})
        await c.expect("ack", cid=str(i))

    async def trimmed() -> bool:
        return [e["seq"] for e in await history_after(c)] == [8, 9, 10, 11, 12]

    await wait_for(trimmed, timeout=15, interval=0.25, message="history trimmed to the last 5")
    late = await chat.connect(a, "bob", after=0)
    resumed = await late.expect("resumed")
    assert resumed["truncated"] is True and late.events() == [8, 9, 10, 11, 12]


async def test_retention_by_age(chat: Chat) -> None:
    """Messages older than a day go. The worker's clock is moved a day past a cutoff that lies
    between the old messages and the new one, so nothing waits for them to age."""
    cutoff: list[float] = []

    def clock() -> float:
        return cutoff[0] + 86400 if cutoff else time.time()

    settings = chat.settings({"retention": {"days": 1}, "limits": {"messagesPerMinute": 100000}},
                             chat_retention_interval_seconds=0.5)
    a = await chat.serve(settings, clock=clock)
    c = await chat.connect(a, "alice")
    for i in range(3):
        await c.send({"type": "send", "cid": f"old{i}", "text": "old"})
        await c.expect("ack", cid=f"old{i}")
    last_old = (await c.expect("event", seq=3))["ts"]  # commit times, in ms
    # The new message must be committed at least 2 ms later, so that a cutoff fits between.
    await wait_for(lambda: time.time() * 1000 >= last_old + 2, message="2 ms past the old messages")
    await c.send({"type": "send", "cid": "new", "text": "new"})
    await c.expect("ack", cid="new")
    assert (await c.expect("event", seq=4))["ts"] >= last_old + 2
    assert [e["text"] for e in await history_after(c)] == ["old"] * 3 + ["new"], "a day has not passed yet"
    cutoff.append((last_old + 1.5) / 1000)

    async def only_new() -> bool:
        return [e["text"] for e in await history_after(c)] == ["new"]

    await wait_for(only_new, timeout=10, interval=0.25, message="the old messages gone, the new one kept")


async def _outcomes(client: ChatClient, cids: set[str]) -> dict[str, str]:
    """Each cid's answer: its ack, or the code of its error."""
    found: dict[str, str] = {}
    while len(found) < len(cids):
        for frame in client.frames:
            if frame.get("cid") in cids and frame["type"] in ("ack", "error"):
                found[frame["cid"]] = "ack" if frame["type"] == "ack" else frame["code"]
        if len(found) < len(cids) and await client.recv(timeout=10.0) is None:
            raise ConnectionError("closed before every send was answered")
    return found


async def test_a_senders_limit_holds_over_two_workers(chat: Chat) -> None:
    """600 messages a minute: 10 a second, bursts of 100, one bucket for the sender whichever worker it writes to."""
    spec = {"limits": {"messagesPerMinute": 600}}
    a, b = await chat.worker(spec), await chat.worker(spec)
    on_a, on_b = await chat.connect(a, "alice"), await chat.connect(b, "alice")
    began = time.monotonic()
    for i in range(75):
        await on_a.send({"type": "send", "cid": f"a{i}", "text": f"a {i}"})
        await on_b.send({"type": "send", "cid": f"b{i}", "text": f"b {i}"})
    answers = {**await _outcomes(on_a, {f"a{i}" for i in range(75)}),
               **await _outcomes(on_b, {f"b{i}" for i in range(75)})}
    elapsed = time.monotonic() - began
    acked = sum(1 for a in answers.values() if a == "ack")
    assert set(answers.values()) <= {"ack", "rate_limited"}, answers
    assert 100 <= acked <= 100 + 10 * elapsed + 1, (acked, elapsed)  # the burst, and what refilled meanwhile
