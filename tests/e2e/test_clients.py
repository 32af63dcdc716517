"""End clients through the front door: accounts, chat across replicas, audio, a live source, the web page."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.sync_api import expect, sync_playwright
from tests.support.audio import decode_pcm, dominant_frequency
from tests.support.e2e import ARTIFACTS, Account, Platform, chat_worker_connections, connect_chat
from tests.support.waiting import wait_for
from tests.support.web import ARGS, CHROMIUM, join, message, register, say

SOURCE_PASSWORD = "veza-dev-source"  # examples/streamchannel.yaml's Secret


async def test_register_login_and_api_through_the_front_door(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        ada = await Account(platform, "Ada").register(session)
        async with session.get(platform.url("/api/v1/rooms"), headers={
                **platform.headers, "Authorization": f"Bearer {ada.access_token}"}) as r:
            assert r.status == 200, await r.text()
            rooms = await r.json()
        assert "general" in str(rooms)
        async with session.get(platform.url("/.well-known/jwks.json"), headers=platform.headers) as r:
            assert r.status == 200
            assert (await r.json())["keys"]
        # Another host is not the platform: the front door has no route for it.
        async with session.get(platform.url("/api/v1/rooms"), headers={"Host": "other.example.com"}) as r:
            assert r.status == 404
        # The API's metrics and readiness details are for Prometheus and the kubelet, not the public.
        for path in ("/metrics", "/readyz"):
            async with session.get(platform.url(path), headers=platform.headers) as r:
                assert r.status == 404, path


async def test_chat_across_two_replicas(platform: Platform) -> None:
    async with aiohttp.ClientSession() as session:
        ada = await Account(platform, "Ada").register(session)
        token = await ada.service_token(session, "veza-chat")
    # The front door balances WebSockets over both pods (once it knows both); enough sockets land on each.
    await wait_for(lambda: platform.front_door_servers("chat-general") == 2, timeout=30,
                   message="the front door balances over both chat pods")
    clients = [await connect_chat(platform, token) for _ in range(6)]
    try:
        connections = await chat_worker_connections(platform)
        assert len(connections) == 2, connections
        assert all(count >= 1 for count in connections.values()), connections
        text = f"hello from the front door {uuid.uuid4().hex[:6]}"
        await clients[0].send({"type": "send", "cid": uuid.uuid4().hex, "text": text})
        ack = await clients[0].expect("ack")
        for client in clients:  # delivered on both replicas (fan-out over NATS)
            event = await client.expect("event", seq=ack["seq"], timeout=15)
            assert event["text"] == text
    finally:
        for client in clients:
            await client.close()


def _push_live_source(platform: Platform, seconds: int, frequency: int, hosts: Path) -> subprocess.Popen[bytes]:
    """A broadcaster going on air with ffmpeg through the front door, to the platform's host name.

    ffmpeg's HTTP output with chunked PUT: an HTTP proxy drops the unframed body of its `icecast://`
    output (docs/streaming.md, "Behind the front door"). ffmpeg resolves the platform's host as DNS
    would, here through an /etc/hosts of its own (a private mount namespace).
    """
    front = urlsplit(platform.front_door)
    hosts.write_text(f"127.0.0.1 localhost\n{front.hostname} {platform.host}\n")
    ffmpeg = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
              "-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=44100:duration={seconds}",
              "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3", "-method", "PUT", "-content_type", "audio/mpeg",
              "-auth_type", "basic",
              f"http://source:{SOURCE_PASSWORD}@{platform.host}:{front.port}/stream/radio/source"]
    return subprocess.Popen(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                             str(hosts), *ffmpeg], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _read(session: aiohttp.ClientSession, platform: Platform, path: str, nbytes: int,
                timeout: float = 30) -> bytes:
    async with session.get(platform.url(path), headers=platform.headers,
                           timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        assert r.status == 200, await r.text()
        data = b""
        async for chunk in r.content.iter_chunked(65536):
            data += chunk
            if len(data) >= nbytes:
                break
        return data


async def _hls_segments(session: aiohttp.ClientSession, platform: Platform, rendition: str, count: int) -> bytes:
    base = f"/stream/radio/hls/{rendition}"
    async with session.get(platform.url(f"{base}/index.m3u8"), headers=platform.headers) as r:
        assert r.status == 200, await r.text()
        playlist = await r.text()
    uris = [line for line in playlist.splitlines() if line and not line.startswith("#")][-count:]
    assert uris, playlist
    data = b""
    for uri in uris:
        async with session.get(platform.url(f"{base}/{uri}" if "/" not in uri else uri),
                               headers=platform.headers) as r:
            assert r.status == 200, uri
            data += await r.read()
    return data


async def test_live_source_is_heard_over_progressive_and_hls(platform: Platform, tmp_path: Path) -> None:
    source = _push_live_source(platform, seconds=40, frequency=880, hosts=tmp_path / "hosts")
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:  # on air once now-playing says the live source is
                async with session.get(platform.url("/stream/radio/now-playing"), headers=platform.headers) as r:
                    assert r.status == 200
                    now = await r.json()
                if "live" in str(now.get("source", "")).lower():
                    break
                assert source.poll() is None, source.stderr.read().decode() if source.stderr else ""
                assert time.monotonic() < deadline, f"live source never on air: {now}"
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # past the switch: what follows is the live tone
            progressive = await _read(session, platform, "/stream/radio/mp3-128", 128_000 // 8 * 4)
            samples, rate = decode_pcm(progressive, "mp3")
            assert abs(dominant_frequency(samples[-rate:], rate) - 880) < 15
            await asyncio.sleep(4)  # whole HLS segments of the live tone
            hls = await _hls_segments(session, platform, "mp3-128", 2)
            samples, rate = decode_pcm(hls, "mp3")
            assert abs(dominant_frequency(samples[-rate:], rate) - 880) < 15
    finally:
        source.kill()
        source.wait()


async def test_wrong_source_password_is_refused_through_the_front_door(platform: Platform) -> None:
    front = urlsplit(platform.front_door)
    wrong = "Basic " + base64.b64encode(b"source:wrong").decode()
    async with aiohttp.ClientSession() as session, session.put(
            f"http://{front.hostname}:{front.port}/stream/radio/source", data=b"\xff\xfb" * 100,
            headers={**platform.headers, "Content-Type": "audio/mpeg", "Authorization": wrong}) as r:
        assert r.status == 401


def test_web_page_in_chromium(platform: Platform) -> None:
    front = urlsplit(platform.front_door)
    url = f"http://{platform.host}:{front.port}"
    with sync_playwright() as pw:
        # The browser resolves the platform's host to the front door, as DNS would.
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=[*ARGS, f"--host-resolver-rules=MAP {platform.host} {front.hostname}"])
        try:
            ctx_a, ctx_b = browser.new_context(), browser.new_context()
            suffix = uuid.uuid4().hex[:6]
            a = register(ctx_a, url, "Ada", f"ada-{suffix}@example.com")
            b = register(ctx_b, url, "Bob", f"bob-{suffix}@example.com")
            join(a, "general")
            join(b, "general")
            say(a, f"browser hello {suffix}")
            try:
                expect(message(a, f"browser hello {suffix}")).to_be_visible(timeout=15_000)
                expect(message(b, f"browser hello {suffix}")).to_be_visible(timeout=15_000)
            finally:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                a.screenshot(path=str(ARTIFACTS / "web-ada.png"))
                b.screenshot(path=str(ARTIFACTS / "web-bob.png"))
            # The channel's player (listen-along needs the room's channel binding, which the API serves
            # only under `veza up` so far).
            a.locator('#channels button[data-channel="radio"]').click()  # selects and plays it
            expect(a.locator("#play")).to_have_text("Stop")
            assert a.wait_for_function(
                "() => { const el = document.getElementById('audio'); return el.currentTime > 1.0 && !el.paused; }",
                timeout=30_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            a.screenshot(path=str(ARTIFACTS / "web-page.png"))
        finally:
            browser.close()


@pytest.mark.parametrize("path", ["/api/v1/nope", "/chat/general/history?limit=abc"])
async def test_bad_requests_get_json_errors(platform: Platform, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(platform.url(path), headers=platform.headers) as r:
        assert 400 <= r.status < 500
        assert "error" in await r.json()
