"""Stream worker test helpers: `veza stream` processes, raw-socket HTTP clients (so the tests see exactly the
bytes a player gets), a paced source body, now-playing, and the playlist of the session's test tracks."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from tests.support.process import VezaProcess

BUCKET = "veza-stream-tests"
# Plays the two tracks the `tracks` fixture (tests/stream/conftest.py) puts in BUCKET.
PLAYLIST_SPEC: dict[str, Any] = {
    "source": {"type": "playlist", "playlist": {"tracks": ["tests/a440.mp3", "tests/b880.ogg"]}},
    "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128},
                   {"name": "aac", "codec": "aac", "bitrateKbps": 96},
                   {"name": "opus", "codec": "opus", "bitrateKbps": 64}],
    "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}},
}


def now_playing(worker: VezaProcess, channel: str, token: str | None = None) -> dict[str, Any]:
    query = f"?token={token}" if token else ""
    with urllib.request.urlopen(f"{worker.url}/stream/{channel}/now-playing{query}", timeout=3) as r:  # noqa: S310
        return dict(json.loads(r.read()))


async def paced(data: bytes, seconds: float, pieces: int = 40) -> AsyncIterator[bytes]:
    """The body of a source client sending in real time."""
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(seconds / pieces)


async def open_stream(url_host: str, port: int, path: str, headers: dict[str, str] | None = None
                      ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(url_host, port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {url_host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            parsed[k.strip().lower()] = v.strip()
    return status, parsed, reader, writer


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], nbytes: int, timeout: float) -> bytes:
    """Up to `nbytes` of (de-chunked) body, or what arrived before the timeout."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    try:
        while len(out) < nbytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if chunked:
                size_line = await asyncio.wait_for(reader.readline(), left)
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                out += await asyncio.wait_for(reader.readexactly(size + 2), left)
                del out[-2:]
            else:
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    break
                out += data
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    return bytes(out)


async def listen(host: str, port: int, path: str, seconds: float, headers: dict[str, str] | None = None,
                 nbytes: int = 10**9) -> tuple[int, dict[str, str], bytes]:
    status, hdrs, reader, writer = await open_stream(host, port, path, headers)
    body = await read_body(reader, hdrs, nbytes, seconds) if status == 200 else await reader.read()
    writer.close()
    return status, hdrs, body
