"""Whose address a request is: as far as the platform's own proxies reach into X-Forwarded-For."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from veza_core.web import client_address


def request(forwarded: str | None) -> web.Request:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return make_mocked_request("GET", "/", headers=headers)


def test_only_the_hops_our_proxies_added_are_believed() -> None:
    peer = make_mocked_request("GET", "/").remote  # what the socket says
    # A client invents the first entries; the front door appends the address it saw last.
    assert client_address(request("6.6.6.6, 203.0.113.7"), 1) == "203.0.113.7"
    assert client_address(request("6.6.6.6, 203.0.113.7, 10.0.0.5"), 2) == "203.0.113.7"
    # No trusted proxy: the header is the client's word, ignored.
    assert client_address(request("203.0.113.7"), 0) == (peer or "unknown")
    # Fewer hops than proxies, or garbage where the address should be: the peer.
    assert client_address(request("203.0.113.7"), 2) == (peer or "unknown")
    assert client_address(request("6.6.6.6, not-an-address"), 1) == (peer or "unknown")
    assert client_address(request("6.6.6.6, 2001:db8::1"), 1) == "2001:db8::1"
