"""Relay source: pull an upstream HTTP stream (MP3 or Ogg) into the channel's pipeline.

Only the replica that encodes pulls the upstream; its bytes go into the relay's
:class:`~veza_stream.sources.PushedSource`, decoded like a live source, so while the
upstream is down the fallback playlist plays and when it returns it takes over again.

Where the relay may connect is checked, since the URL comes from a custom resource:

- the scheme is http or https and the URL's host is in ``allowedHosts`` (case-insensitive);
- every address the host resolves to must be public (``ipaddress``'s ``is_global``: no
  loopback, link-local and cloud metadata 169.254.169.254, private, shared, reserved or
  multicast ranges) unless that address, or a network holding it, is itself listed in
  ``allowedHosts`` (``127.0.0.1``, ``10.0.0.0/8``). The check runs in the connector's
  resolver, on the very addresses aiohttp then connects to, so DNS cannot answer
  differently between check and connect;
- an IPv6 address that carries an IPv4 one (NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``,
  IPv4-compatible ``::/96``, Teredo) must pass the check for that IPv4 address too;
- the cloud metadata addresses (169.254.0.0/16, fd00:ec2::/32, 100.100.100.200) are refused even
  when ``allowedHosts`` lists them;
- redirects are followed (at most 3) only to the same host; a redirect elsewhere is refused.

Failures back off exponentially (1 s doubling to 30 s, with jitter); a connection that
played for a while resets the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .metrics import RELAY_CONNECTS
from .sources import PushedSource
from .spec import Relay

log = logging.getLogger(__name__)

FORMATS = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/mpeg3": "mp3", "audio/ogg": "ogg",
           "application/ogg": "ogg", "audio/opus": "ogg", "audio/vorbis": "ogg"}
EXTENSIONS = {".mp3": "mp3", ".ogg": "ogg", ".opus": "ogg", ".oga": "ogg"}
MAX_REDIRECTS = 3
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayRefused(Exception):
    """The upstream may not be reached (a configuration problem: retrying will not help soon)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RelayPolicy:
    """What a channel's relay may reach: its spec's `allowedHosts`, within what the platform allows (`denied`: the
    platform engineer's networks, refused whatever a resource lists, like the metadata addresses)."""

    def __init__(self, allowed_hosts: list[str], denied: list[Network] | None = None) -> None:
        self.hosts: set[str] = set()
        self.networks: list[Network] = []
        self.denied: tuple[Network, ...] = (*ALWAYS_DENIED, *(denied or ()))
        for entry in allowed_hosts:
            entry = entry.strip().lower().rstrip(".")
            if not entry:
                continue
            self.hosts.add(entry.strip("[]"))
            with contextlib.suppress(ValueError):
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))

    def check_url(self, url: str) -> str:
        """The URL's host, if the URL may be requested at all (before DNS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise RelayRefused("scheme_not_allowed", f"relay URLs are http or https, not {parts.scheme!r}")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise RelayRefused("bad_url", "the relay URL has no host")
        if host not in self.hosts:
            raise RelayRefused("host_not_allowed", f"{host} is not in allowedHosts")
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
            # aiohttp connects to an address literal without asking the resolver: check it here.
            self.check_address(host.strip("[]"))
        return host

    def check_address(self, address: str) -> None:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        # Never, whatever allowedHosts says: the cloud metadata endpoints (a resource's author must
        # not reach the node's credentials).
        for checked in (ip, *embedded_ipv4(ip)):
            if any(checked in network for network in self.denied):
                raise RelayRefused("address_not_allowed",
                                   f"the relay host resolves to {ip}, a metadata address or one the platform denies")
        # An IPv6 address carrying an IPv4 one (NAT64, 6to4, IPv4-compatible, Teredo) reaches that
        # IPv4 address: both must pass. `ipaddress` calls 64:ff9b::/96 and 2002::/16 global.
        if all(c.is_global and not c.is_multicast for c in (ip, *embedded_ipv4(ip))):
            return
        if any(ip in network for network in self.networks):
            return  # an internal address the spec lists explicitly
        raise RelayRefused("address_not_allowed",
                           f"the relay host resolves to {ip}, an internal address not listed in allowedHosts")


# Cloud metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS over IPv6; Alibaba).
ALWAYS_DENIED: tuple[Network, ...] = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00:ec2::/32"),
                                      ipaddress.ip_network("100.100.100.200/32"))
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def embedded_ipv4(ip: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to (the last 32 bits of NAT64 and IPv4-compatible
    addresses, 6to4's, both ends of Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if any(ip in network for network in NAT64) or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, refusing addresses the policy forbids (on the addresses actually connected to)."""

    def __init__(self, policy: RelayPolicy) -> None:
        self.policy = policy
        self.refused: RelayRefused | None = None

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        out: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            try:
                self.policy.check_address(address)
            except RelayRefused as exc:
                self.refused = exc
                continue
            out.append({"hostname": host, "host": address, "port": int(sockaddr[1]), "family": fam,
                        "proto": proto, "flags": socket.AI_NUMERICHOST})
        if not out:
            raise self.refused or OSError(f"{host} did not resolve")
        return out

    async def close(self) -> None:
        return None


def stream_format(content_type: str, url: str) -> str | None:
    fmt = FORMATS.get(content_type.split(";", 1)[0].strip().lower())
    if fmt is None:
        path = urlsplit(url).path.lower()
        fmt = next((f for ext, f in EXTENSIONS.items() if path.endswith(ext)), None)
    return fmt


class IcyStripper:
    """Removes ICY metadata blocks from a stream sent with `icy-metaint`, keeping the last StreamTitle."""

    def __init__(self, metaint: int) -> None:
        self.metaint = metaint
        self.until_meta = metaint
        self.meta_left = -1  # > -1: inside a metadata block (bytes still to read); 0 before its length byte
        self.meta = bytearray()
        self.title: str | None = None

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        view = memoryview(data)
        while view:
            if self.meta_left < 0:
                n = min(self.until_meta, len(view))
                out += view[:n]
                view = view[n:]
                self.until_meta -= n
                if self.until_meta == 0:
                    self.meta_left = 0
            elif self.meta_left == 0 and not self.meta:
                self.meta_left = view[0] * 16
                view = view[1:]
                self.meta = bytearray(b"\0")  # marks "length byte read"
                if self.meta_left == 0:
                    self._end_block()
            else:
                n = min(self.meta_left, len(view))
                self.meta += view[:n]
                view = view[n:]
                self.meta_left -= n
                if self.meta_left == 0:
                    self._end_block()
        return bytes(out)

    def _end_block(self) -> None:
        text = bytes(self.meta[1:]).rstrip(b"\0").decode("utf-8", "replace")
        if text.startswith("StreamTitle='"):
            self.title = text[len("StreamTitle='"):].split("';", 1)[0]
        self.meta = bytearray()
        self.meta_left = -1
        self.until_meta = self.metaint


class RelayPuller:
    """Keeps the relay source fed from the upstream while this replica encodes."""

    def __init__(self, channel: str, spec: Relay, source: PushedSource, *, min_backoff: float = 1.0,
                 max_backoff: float = 30.0, denied: list[Network] | None = None) -> None:
        self.channel = channel
        self.url = spec.url
        self.policy = RelayPolicy(spec.allowed_hosts, denied)
        self.source = source
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.connected = False
        self.error: str | None = None
        self.attempts = 0

    def status(self) -> dict[str, Any]:
        # now-playing is public on a public channel: never the credentials a relay URL may hold.
        return {"url": without_credentials(self.url), "connected": self.connected,
                "error": self.error and self.error.replace(self.url, without_credentials(self.url)),
                "attempts": self.attempts}

    async def run(self) -> None:
        """Pull forever (cancel to stop)."""
        backoff = self.min_backoff
        while True:
            started = time.monotonic()
            self.attempts += 1
            try:
                await self._pull()
                result = "ended"
                self.error = "upstream ended the stream"
            except RelayRefused as exc:
                result = exc.code
                self.error = f"{exc.code}: {exc}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                result = "unreachable"
                self.error = f"unreachable: {exc!r}"
            finally:
                self.connected = False
            RELAY_CONNECTS.labels(self.channel, result).inc()
            log.info("relay disconnected", extra={"channel": self.channel, "result": result, "error": self.error})
            if time.monotonic() - started > 30:
                backoff = self.min_backoff
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff)

    async def _pull(self) -> None:
        host = self.policy.check_url(self.url)
        resolver = CheckedResolver(self.policy)
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=10)
        connector = aiohttp.TCPConnector(resolver=resolver, limit=1, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            url = self.url
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    response = await session.get(url, allow_redirects=False,
                                                 headers={"Icy-MetaData": "1", "User-Agent": "veza-relay"})
                except aiohttp.ClientConnectorError:
                    if resolver.refused is not None:
                        raise resolver.refused from None
                    raise
                if response.status in (301, 302, 303, 307, 308):
                    target = urljoin(url, response.headers.get("Location", ""))
                    response.release()
                    if (urlsplit(target).hostname or "").lower().rstrip(".") != host \
                            or urlsplit(target).scheme not in ("http", "https"):
                        raise RelayRefused("redirect_refused", f"the upstream redirects to another host: {target}")
                    url = target
                    continue
                break
            else:
                raise RelayRefused("too_many_redirects", "the upstream redirects too often")
            async with response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                      message=f"upstream answered {response.status}")
                fmt = stream_format(response.headers.get("Content-Type", ""), url)
                if fmt is None:
                    raise RelayRefused("unsupported_media_type",
                                       f"upstream content type {response.headers.get('Content-Type')!r}")
                await self._feed(response, fmt)

    async def _feed(self, response: aiohttp.ClientResponse, fmt: str) -> None:
        metaint = response.headers.get("icy-metaint", "")
        icy = IcyStripper(int(metaint)) if metaint.isdigit() and 0 < int(metaint) <= 1 << 20 else None
        title = response.headers.get("icy-name") or response.headers.get("Ice-Name") or "relay"
        old = self.source.session
        if old is not None and not old.finished.is_set():
            await asyncio.to_thread(old.finished.wait, 5)
        session = self.source.open(fmt, title=title[:200])
        self.connected = True
        self.error = None
        log.info("relay connected", extra={"channel": self.channel, "url": self.url, "format": fmt})
        try:
            async for data in response.content.iter_any():
                if icy is not None:
                    data = icy.feed(data)
                    if icy.title:
                        self.source.title = icy.title[:200]
                while not session.feed(data):  # noqa: ASYNC110 (the queue is drained by a thread)
                    await asyncio.sleep(0.02)  # the decoder is behind: stop reading (TCP backpressure)
                if session.finished.is_set():
                    raise RelayRefused("undecodable_source", f"the upstream is not {fmt} audio: {session.error}")
        finally:
            await asyncio.to_thread(session.end)
