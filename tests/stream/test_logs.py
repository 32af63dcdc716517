"""Tokens travel in query strings (players cannot always set headers); they never reach a log line."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from tests.support.stream import listen
from veza_core.auth import AUDIENCE_STREAM, TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data
from veza_core.logs import JsonFormatter

ISSUER = "https://veza.test"
SPEC = {"visibility": "private", "source": {"type": "live"},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}]}


async def test_query_tokens_leave_no_trace_in_the_logs(start_worker: Any, tmp_path: Path) -> None:
    key = generate_signing_key()
    (tmp_path / "keys").mkdir()
    for name, text in secret_data([key]).items():
        (tmp_path / "keys" / name).write_text(text)
    issuer = TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)
    worker = start_worker("hush", SPEC, VEZA_JWT_KEYS_DIR=str(tmp_path / "keys"), VEZA_JWT_ISSUER=ISSUER,
                          VEZA_LOG_LEVEL="DEBUG")
    secrets = {
        "listener": issuer.issue("u1", audience=AUDIENCE_STREAM, res={"channel/hush": "listener"}),
        "broadcaster": issuer.issue("u2", audience=AUDIENCE_STREAM, res={"channel/hush": "broadcaster"}),
        "garbage": "SECRET-not-a-jwt-0123456789",
    }
    paths = [f"/stream/hush/now-playing?token={secrets['listener']}",
             f"/stream/hush/mp3?token={secrets['listener']}",
             f"/stream/hush/hls/master.m3u8?a=1&token={secrets['garbage']}",
             f"/stream/hush/admin/metadata?mode=updinfo&song=x&token={secrets['broadcaster']}",
             f"/stream/hush/nowhere?TOKEN={secrets['garbage']}",
             f"/stream/hush/mp3?token={secrets['garbage']}%20;"]
    for path in paths:
        await listen("127.0.0.1", worker.port, path, 0.5)
    # A request aiohttp's parser refuses, with the token in its first line.
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    writer.write(f"GET /stream/hush/mp3?token={secrets['listener']} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
                 .encode())
    await writer.drain()
    await reader.read()
    writer.close()
    worker.stop()
    logs = worker.logs()
    assert '"path": "/stream/hush/now-playing"' in logs  # the requests were logged
    assert '"query": "token=[redacted]"' in logs  # ... with their query strings, tokens redacted
    for name, secret in secrets.items():
        for line in logs.splitlines():
            assert secret not in line and secret[-20:] not in line, (name, line)


def test_the_formatter_redacts_tokens_wherever_they_appear() -> None:
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "GET %s", (f"/a?x=1&token={token}",), None)
    record.url = f"http://h/p?access_token={token}&b=2"
    record.header = f"Bearer {token}"
    record.protocols = f"veza.chat.v1, bearer.{token}"
    line = JsonFormatter("test").format(record)
    assert token not in line and "c2lnbmF0dXJl" not in line
    entry = json.loads(line)
    assert entry["msg"] == "GET /a?x=1&token=[redacted]" and entry["url"] == "http://h/p?access_token=[redacted]&b=2"
