"""Relay source: an upstream on loopback (allowed explicitly), fallback while it is down, refused upstreams."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any

import pytest
from aiohttp import web

from tests.support.audio import decode_pcm, frequencies_over_time, sine
from tests.support.stream import now_playing, open_stream, read_body
from tests.support.waiting import wait_for
from veza_stream.relay import RelayPolicy, RelayRefused, without_credentials

FALLBACK = {"playlist": {"tracks": ["tests/relay-fallback440.mp3"]}}


@pytest.fixture(scope="module")
def fallback_track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/relay-fallback440.mp3", Body=sine(440, 3.0, "mp3"))


class Upstream:
    """An Icecast-like upstream: each GET streams a tone in real time, or 503 while `up` is False."""

    def __init__(self) -> None:
        self.up = True
        self.requests: list[str] = []
        self.bodies = {"mp3": (sine(1000, 3.0, "mp3", rate=48000), "audio/mpeg"),
                       "ogg": (sine(1500, 3.0, "ogg"), "audio/ogg")}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        if not self.up:
            return web.Response(status=503)
        data, ctype = self.bodies[request.match_info["fmt"]]
        icy = request.headers.get("Icy-MetaData") == "1"
        response = web.StreamResponse(headers={"Content-Type": ctype, "icy-name": "Upstream FM",
                                               **({"icy-metaint": "2000"} if icy else {})})
        await response.prepare(request)
        pieces = 30
        step = -(-len(data) // pieces)
        sent = 0
        for i in range(0, len(data), step):
            part = data[i:i + step]
            if icy:  # interleave a StreamTitle every 2000 bytes, as Icecast does
                out = bytearray()
                for b in part:
                    out.append(b)
                    sent += 1
                    if sent % 2000 == 0:
                        meta = b"StreamTitle='Upstream song';"
                        blocks = -(-len(meta) // 16)
                        out += bytes([blocks]) + meta.ljust(blocks * 16, b"\0")
                part = bytes(out)
            await response.write(part)
            await asyncio.sleep(3.0 / pieces)
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        raise web.HTTPFound(request.query["to"])

    def start(self) -> Upstream:
        """Serve from a thread of its own, so the test's blocking calls (starting workers) never stall it."""
        started = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/live.{fmt}", self.stream)
            app.router.add_get("/redirect", self.redirect)
            self.runner = web.AppRunner(app, shutdown_timeout=0.5)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.stopping = asyncio.Event()
            started.set()
            await self.stopping.wait()
            await self.runner.cleanup()

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        assert started.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
        self.loop.close()


def relay_spec(url: str, allowed: list[str]) -> dict[str, Any]:
    return {"source": {"type": "relay", "relay": {"url": url, "allowedHosts": allowed}, "fallback": FALLBACK},
            "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
            "delivery": {"hls": {"enabled": False}}}


async def test_relay_plays_upstream_falls_back_and_returns(fallback_track: None, start_worker: Any) -> None:
    upstream = Upstream().start()
    try:
        url = f"http://127.0.0.1:{upstream.port}/live.mp3"
        worker = start_worker("relayed", relay_spec(url, ["127.0.0.1"]), VEZA_STREAM_RELAY_MAX_BACKOFF="1")
        status, headers, reader, writer = await open_stream("127.0.0.1", worker.port, "/stream/relayed/mp3")
        assert status == 200
        first = await read_body(reader, headers, 10**9, 2.5)  # the upstream's first 3 s stream
        assert now_playing(worker, "relayed")["relay"]["connected"] is True
        assert now_playing(worker, "relayed")["title"] == "Upstream song"  # ICY StreamTitle, stripped from audio
        upstream.up = False  # the stream ends and reconnects get 503: the fallback plays
        down = await read_body(reader, headers, 10**9, 3.5)
        upstream.bodies["mp3"] = upstream.bodies["ogg"]  # it comes back, now serving Ogg Opus at 1500 Hz
        upstream.up = True
        back = await read_body(reader, headers, 10**9, 6.0)
        writer.close()
    finally:
        upstream.stop()
    freqs = [frequencies_over_time(*decode_pcm(body, "mp3"), 0.25) for body in (first, down, back)]
    assert sum(abs(f - 1000) < 20 for f in freqs[0]) >= 5, freqs[0]
    assert sum(abs(f - 440) < 15 for f in freqs[1]) >= 5, freqs[1]
    assert sum(abs(f - 1500) < 20 for f in freqs[2]) >= 5, freqs[2]  # reconnected with backoff, Ogg decoded
    assert len(upstream.requests) >= 3  # connected, refused with 503 at least once, reconnected
    assert worker.alive()


async def test_relay_refuses_hosts_addresses_and_redirects(fallback_track: None, start_worker: Any) -> None:
    upstream = Upstream().start()
    port = upstream.port
    try:
        cases = {
            # The URL's host is not listed.
            "relay-host": (f"http://127.0.0.1:{port}/live.mp3", ["radio.example.com"], "host_not_allowed"),
            # The host is listed but resolves to loopback, which is not itself listed.
            "relay-addr": (f"http://localhost:{port}/live.mp3", ["localhost"], "address_not_allowed"),
            # An allowed upstream redirecting to another host.
            "relay-redir": (f"http://127.0.0.1:{port}/redirect?to=http://localhost:{port}/live.mp3",
                            ["127.0.0.1", "localhost"], "redirect_refused"),
            "relay-scheme": ("file:///etc/passwd", ["127.0.0.1"], "scheme_not_allowed"),
            # Listed by the channel, but in a network the platform denies (the operator's deny list).
            "relay-denied": (f"http://127.0.0.1:{port}/live.mp3", ["127.0.0.1"], "address_not_allowed"),
        }
        platform_denies = {"relay-denied": {"VEZA_STREAM_RELAY_DENIED_NETWORKS": "10.96.0.0/12, 127.0.0.0/8"}}
        workers = {name: start_worker(name, relay_spec(url, allowed), **platform_denies.get(name, {}))
                   for name, (url, allowed, _) in cases.items()}
        await wait_for(lambda: all(now_playing(workers[name], name)["relay"]["error"] for name in cases), timeout=10,
                       message="every relay refused")
        heard = await asyncio.wait_for(asyncio.gather(
            *(_listen(workers[name].port, f"/stream/{name}/mp3") for name in cases)), 15)
        for (name, (_, _, code)), (status, _, body) in zip(cases.items(), heard, strict=True):
            relay = now_playing(workers[name], name)["relay"]
            assert relay["connected"] is False and relay["error"].startswith(code), (name, relay)
            assert status == 200
            freqs = frequencies_over_time(*decode_pcm(body, "mp3"), 0.25)
            assert sum(abs(f - 440) < 15 for f in freqs) >= 4, (name, freqs)  # the fallback plays instead
            assert workers[name].alive()
        # Only the redirect case reached the upstream, and only its allowed first hop.
        assert upstream.requests and set(upstream.requests) == {"/redirect"}, upstream.requests
    finally:
        upstream.stop()


async def _listen(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    status, headers, reader, writer = await open_stream("127.0.0.1", port, path)
    body = await read_body(reader, headers, 10**9, 2.0)
    writer.close()
    return status, headers, body


def test_policy_addresses() -> None:
    """The address check alone (the workers above exercise it through DNS and the connector)."""
    policy = RelayPolicy(["radio.example.com", "10.1.0.0/16", "127.0.0.1"])
    for internal in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "10.2.0.1", "192.168.1.1", "::1",
                     "127.0.0.2", "0.0.0.0", "::ffff:169.254.169.254", "fe80::1%eth0", "224.0.0.1"):
        with pytest.raises(RelayRefused) as refused:
            policy.check_address(internal)
        assert refused.value.code == "address_not_allowed", internal
    # IPv6 addresses that lead to an internal IPv4 one (`ipaddress` calls the first three global).
    for wrapped in ("64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe", "64:ff9b:1::a00:1",
                    "64:ff9b::7f00:1"):
        with pytest.raises(RelayRefused):
            policy.check_address(wrapped)
    # The metadata addresses stay refused even when a spec lists them.
    generous = RelayPolicy(["169.254.0.0/16", "fd00::/8", "0.0.0.0/0"])
    for metadata in ("169.254.169.254", "fd00:ec2::254", "64:ff9b::a9fe:a9fe", "100.100.100.200"):
        with pytest.raises(RelayRefused):
            generous.check_address(metadata)
    generous.check_address("10.0.0.1")  # listed: allowed
    # An address literal in the URL is never resolved (aiohttp connects to it at once): checked with the URL.
    literal = RelayPolicy(["169.254.169.254", "[fd00:ec2::254]", "127.0.0.1"])
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        with pytest.raises(RelayRefused) as refused:
            literal.check_url(url)
        assert refused.value.code == "address_not_allowed", url
    assert literal.check_url("http://127.0.0.1:8000/live") == "127.0.0.1"  # listed, internal: allowed
    # The platform's deny list wins over what a resource lists, embedded IPv4 included.
    denied = RelayPolicy(["10.0.0.0/8"], denied=[ipaddress.ip_network("10.96.0.0/12")])
    for service_range in ("10.96.0.10", "64:ff9b::a60:a"):
        with pytest.raises(RelayRefused):
            denied.check_address(service_range)
    denied.check_address("10.1.2.3")
    # now-playing shows the relay's URL, never the credentials it may hold.
    assert without_credentials("http://dj:s3cret@radio.example.com:8000/live?x=1") == \
        "http://radio.example.com:8000/live?x=1"
    for fine in ("93.184.216.34", "2606:2800:220:1::1", "10.1.2.3", "127.0.0.1", "64:ff9b::5db8:d822"):
        policy.check_address(fine)  # public, or internal but listed explicitly
    assert policy.check_url("https://Radio.Example.com./stream") == "radio.example.com"
    for url, code in (("http://evil.example.com/", "host_not_allowed"),
                      ("ftp://radio.example.com/", "scheme_not_allowed"),
                      ("http:///x", "bad_url")):
        with pytest.raises(RelayRefused) as refused:
            policy.check_url(url)
        assert refused.value.code == code, url
