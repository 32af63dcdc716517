"""Progressive listeners handed over to their feed: framing (chunked HTTP/1.1, raw HTTP/1.0), the burst, ICY
metadata, X-Veza-Stream-Time, HEAD, slow-listener dropping, gone listeners, closing at shutdown, and what a listener
costs once the HTTP server has let go of it (no task, no server connection, a few kB of memory).

The real route handler (`progressive.serve`) runs in an aiohttp server in the test's loop, over a feed the test
publishes into; the clients are raw sockets, so the tests see exactly the bytes a player gets."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.support.stream import open_stream, read_body
from tests.support.waiting import wait_for
from veza_local.services import free_port
from veza_stream import progressive
from veza_stream.icy import metadata_block
from veza_stream.metrics import LISTENERS, LISTENERS_DROPPED
from veza_stream.renditions import Listener, RenditionFeed
from veza_stream.settings import WRITE_INTERVAL
from veza_stream.transcoder import Chunk

INTERVAL = int(WRITE_INTERVAL * 48000)  # samples per flush at the feed's default write interval


@dataclass
class Server:
    feed: RenditionFeed
    runner: web.AppRunner
    port: int
    pts: int = 0

    def publish(self, data: bytes) -> None:
        """One flush's worth of audio: written to every listener at once."""
        self.feed.publish([Chunk(data, self.pts, INTERVAL)])
        self.pts += INTERVAL


async def start_server(name: str) -> Server:
    feed = RenditionFeed(f"prog-{name[:40]}", "mp3", "audio/mpeg", max_buffer=64 * 1024)

    async def listen(req: web.Request) -> web.StreamResponse:
        return await progressive.serve(req, feed, 150, lambda pts: 1000.0 + pts / 48000)

    app = web.Application()
    app.router.add_get("/listen", listen)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    srv = Server(feed, runner, port)
    srv.publish(b"A" * 100)  # the burst a listener gets first
    return srv


async def stop_server(srv: Server) -> None:
    srv.feed.close_all("shutdown")
    await srv.runner.cleanup()


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    srv = await start_server(request.node.name)
    yield srv
    await stop_server(srv)


async def raw_get(port: int, head: str) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"\r\n\r\n")
    return await reader.readuntil(b"\r\n\r\n"), reader, writer


def _serves_http_or_stream(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(part in code.co_filename for part in ("veza_stream", "aiohttp"))


async def test_chunked_and_raw_framing_after_the_handover(server: Server) -> None:
    status, headers, reader, writer = await open_stream("127.0.0.1", server.port, "/listen")
    assert status == 200 and headers["transfer-encoding"] == "chunked" and headers["content-type"] == "audio/mpeg"
    assert headers["x-veza-stream-time"] == "1000.000"  # the stream time of the burst's first chunk
    head, raw_reader, raw_writer = await raw_get(server.port, "GET /listen HTTP/1.0")
    assert head.startswith(b"HTTP/1.0 200") and b"Transfer-Encoding" not in head
    await wait_for(lambda: len(server.feed.listeners) == 2, message="both listeners attached")
    # The server let go of both connections and runs no handler for them; the feed's protocol owns each transport.
    await wait_for(lambda: not server.runner.server.connections if server.runner.server else False,
                   message="no connection left with aiohttp")
    assert all(type(t.get_protocol()) is Listener for t in server.feed._chunked | server.feed._plain)
    before = asyncio.all_tasks()
    server.publish(b"B" * 100)
    server.publish(b"C" * 100)
    assert await read_body(reader, headers, 300, 5) == b"A" * 100 + b"B" * 100 + b"C" * 100
    assert await asyncio.wait_for(raw_reader.readexactly(300), 5) == b"A" * 100 + b"B" * 100 + b"C" * 100
    # Each write to a chunked listener is one HTTP chunk (no terminator ever: the response does not end).
    server.publish(b"D" * 16)
    assert await asyncio.wait_for(reader.readexactly(len(b"10\r\n") + 16 + 2), 5) == b"10\r\n" + b"D" * 16 + b"\r\n"
    # No task per listener came with the writes (the session's loop runs other tests' servers too, whose own tasks
    # come and go: only the stream's and aiohttp's are looked at).
    assert not [t for t in asyncio.all_tasks() - before if _serves_http_or_stream(t)]
    for w in (writer, raw_writer):
        w.close()


async def test_icy_metadata_is_interleaved_at_metaint(server: Server) -> None:
    server.feed.set_title("Tone A")
    head, reader, writer = await raw_get(server.port, "GET /listen HTTP/1.0\r\nIcy-MetaData: 1")
    assert b"icy-metaint: 150" in head
    await wait_for(lambda: len(server.feed.listeners) == 1, message="listener attached")
    server.publish(b"B" * 100)
    server.feed.set_title("Tone B")
    server.publish(b"C" * 200)
    server.publish(b"D" * 100)  # the title unchanged since it was sent: a zero length byte
    expected = (b"A" * 100 + b"B" * 50 + metadata_block("Tone A") + b"B" * 50 + b"C" * 100 + metadata_block("Tone B")
                + b"C" * 100 + b"D" * 50 + b"\0" + b"D" * 50)
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    writer.close()


async def test_head_gets_headers_and_no_listener(server: Server) -> None:
    head, reader, writer = await raw_get(server.port, "HEAD /listen HTTP/1.1\r\nHost: x\r\nConnection: close")
    assert head.startswith(b"HTTP/1.1 200") and b"audio/mpeg" in head
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not server.feed.listeners
    writer.close()


async def test_a_gone_listener_is_forgotten_and_shutdown_closes_the_rest(server: Server) -> None:
    gauge = LISTENERS.labels(server.feed.channel, "mp3")
    _, _, gone = await raw_get(server.port, "GET /listen HTTP/1.0")
    _, staying_reader, _ = await raw_get(server.port, "GET /listen HTTP/1.0")
    await wait_for(lambda: len(server.feed.listeners) == 2, message="listeners attached")
    assert gauge._value.get() == 2
    gone.close()
    await wait_for(lambda: len(server.feed.listeners) == 1, message="the gone listener forgotten")
    assert gauge._value.get() == 1
    server.feed.close_all("shutdown")
    assert not server.feed.listeners and gauge._value.get() == 0
    assert await asyncio.wait_for(staying_reader.read(), 5) == b"A" * 100  # the burst, then the end of the stream


async def test_a_slow_listener_is_dropped_and_holds_no_one_back(server: Server) -> None:
    dropped = LISTENERS_DROPPED.labels(server.feed.channel, "mp3")
    before = dropped._value.get()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a listener that reads nothing and buffers little
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", server.port))
    slow.send(b"GET /listen HTTP/1.0\r\n\r\n")
    _, reader, writer = await raw_get(server.port, "GET /listen HTTP/1.0")
    await wait_for(lambda: len(server.feed.listeners) == 2, message="listeners attached")
    received = 0

    async def keep_reading() -> None:
        nonlocal received
        while data := await reader.read(1 << 16):
            received += len(data)

    reading = asyncio.create_task(keep_reading())
    piece = b"x" * 32 * 1024
    sent = 0
    for _ in range(400):  # up to 12.5 MiB: far more than the slow one's kernel buffers and 64 KiB of transport buffer
        server.publish(piece)
        sent += len(piece)
        await asyncio.sleep(0.005)
        if len(server.feed.listeners) == 1:
            break
    assert len(server.feed.listeners) == 1 and dropped._value.get() == before + 1
    await wait_for(lambda: received >= 100 + sent, message="the reading listener got everything")
    slow.close()
    writer.close()
    reading.cancel()


async def listener_memory(n: int = 200) -> float:
    """Python memory per listener once handed over, client socket included, in bytes (it was ~12 kB with an aiohttp
    handler, task, request and response per listener)."""
    server = await start_server("memory")
    loop = asyncio.get_running_loop()

    async def connect(count: int) -> list[socket.socket]:
        socks = []
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", server.port))
            s.send(b"GET /listen HTTP/1.0\r\n\r\n")
            socks.append(s)
        return socks

    warm = await connect(20)  # one-time allocations (aiohttp's parser, caches) before measuring
    await wait_for(lambda: len(server.feed.listeners) == 20, message="warm-up listeners attached")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        socks = await connect(n)
        await wait_for(lambda: len(server.feed.listeners) == 20 + n, message="listeners attached")
        await asyncio.sleep(0.2)
        gc.collect()
        per_listener = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    for s in warm + socks:
        s.close()
    await wait_for(lambda: not server.feed.listeners, message="listeners forgotten")
    await stop_server(server)
    return per_listener


def test_a_listener_costs_a_few_kilobytes() -> None:
    """Measured in a process of its own: tracemalloc counts every allocation of the process, and in the test
    session's loop other tests' servers and clients allocate meanwhile."""
    measure = (f"import asyncio, {__name__} as t, veza_core.eventloop as e\n"  # on the loop the stream worker serves on
               "with asyncio.Runner(loop_factory=e.new_event_loop) as r: print(r.run(t.listener_memory()))")
    done = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert done.returncode == 0, done.stderr
    per_listener = float(done.stdout.split()[-1])
    assert per_listener < 4096, per_listener
