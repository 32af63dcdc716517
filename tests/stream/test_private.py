"""Private channels: listeners need a JWT with the stream audience (header or ?token=), progressive and HLS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.audio import decode_pcm, dominant_frequency, sine
from tests.support.stream import listen, now_playing
from tests.support.waiting import wait_for
from veza_core.auth import AUDIENCE_API, AUDIENCE_STREAM, TokenIssuer
from veza_core.keys import KeySet, generate_signing_key, secret_data

ISSUER = "http://veza.test"
SPEC = {"source": {"type": "playlist", "playlist": {"tracks": ["tests/private770.mp3"]}},
        "renditions": [{"name": "mp3", "codec": "mp3", "bitrateKbps": 128}],
        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 1}}, "visibility": "private"}


@pytest.fixture(scope="module")
def track(bucket: Any) -> None:
    bucket.put_object(Bucket="veza-stream-tests", Key="tests/private770.mp3", Body=sine(770, 3.0, "mp3"))


def write_keys(directory: Path, keys: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in secret_data(keys).items():
        (directory / name).write_text(text)


async def test_private_channel_needs_a_listener_token(track: None, start_worker: Any, tmp_path: Path) -> None:
    key = generate_signing_key()
    write_keys(tmp_path / "keys", [key])
    issuer = TokenIssuer(KeySet.from_private_keys([key]), issuer=ISSUER)
    other = TokenIssuer(KeySet.from_private_keys([generate_signing_key()]), issuer=ISSUER)
    worker = start_worker("secret", SPEC, VEZA_JWT_KEYS_DIR=str(tmp_path / "keys"), VEZA_JWT_ISSUER=ISSUER)
    good = issuer.issue("u1", audience=AUDIENCE_STREAM, name="ann", res={"channel/secret": "listener"})
    refused = {
        "no token": ({}, "/stream/secret/mp3", "token_required"),
        "api audience": ({"Authorization": f"Bearer {issuer.issue('u1', audience=AUDIENCE_API)}"},
                         "/stream/secret/mp3", None),
        "foreign key": ({"Authorization": f"Bearer {other.issue('u1', audience=AUDIENCE_STREAM)}"},
                        "/stream/secret/mp3", None),
        "expired": ({"Authorization": f"Bearer {issuer.issue('u1', audience=AUDIENCE_STREAM, ttl=-60)}"},
                    "/stream/secret/mp3", None),
        "garbage": ({}, "/stream/secret/mp3?token=not.a.jwt", None),
        "hls without": ({}, "/stream/secret/hls/master.m3u8", "token_required"),
    }
    for case, (headers, path, code) in refused.items():
        status, _, body = await listen("127.0.0.1", worker.port, path, 1.0, headers=headers)
        assert status == 401, (case, status, body)
        error = json.loads(body)["error"]
        assert code is None or error["code"] == code, (case, error)
    # Signed in, but with no role on this channel (a role on another, or on a room of that name):
    # any user of the platform could otherwise listen to every private channel.
    strangers = {
        "no role": issuer.issue("u2", audience=AUDIENCE_STREAM, name="eve"),
        "another channel": issuer.issue("u2", audience=AUDIENCE_STREAM, res={"channel/other": "broadcaster"}),
        "a room": issuer.issue("u2", audience=AUDIENCE_STREAM, res={"room/secret": "owner"}),
    }
    for case, token in strangers.items():
        for path in (f"/stream/secret/mp3?token={token}", f"/stream/secret/hls/master.m3u8?token={token}"):
            status, _, body = await listen("127.0.0.1", worker.port, path, 1.0)
            assert status == 403 and json.loads(body)["error"]["code"] == "not_listener", (case, path, status)
    # What is on air on a private channel is its listeners' business too.
    for token, expected in ((None, 401), (strangers["no role"], 403)):
        query = f"?token={token}" if token else ""
        status, _, body = await listen("127.0.0.1", worker.port, f"/stream/secret/now-playing{query}", 1.0)
        assert status == expected, (status, body)
    await wait_for(lambda: now_playing(worker, "secret", good)["source"] == "playlist", timeout=10,
                   message="the playlist on air")
    for headers, path in (({"Authorization": f"Bearer {good}"}, "/stream/secret/mp3"),
                          ({}, f"/stream/secret/mp3?token={good}")):
        status, _, body = await listen("127.0.0.1", worker.port, path, 2.0, headers=headers)
        assert status == 200
        samples, rate = decode_pcm(body, "mp3")
        assert len(samples) / rate > 1.5 and abs(dominant_frequency(samples, rate) - 770) < 10
    status, _, body = await listen("127.0.0.1", worker.port, f"/stream/secret/hls/master.m3u8?token={good}", 1.0)
    assert status == 200 and body.startswith(b"#EXTM3U")
    for case, token in {"broadcaster": issuer.issue("u3", audience=AUDIENCE_STREAM,
                                                    res={"channel/secret": "broadcaster"}),
                        "admin": issuer.issue("u4", audience=AUDIENCE_STREAM, roles=["admin"])}.items():
        status, _, _ = await listen("127.0.0.1", worker.port, f"/stream/secret/hls/master.m3u8?token={token}", 1.0)
        assert status == 200, case
    assert worker.alive()
