"""Fuzzing every parser of what the public sends, for a bounded time each.

Each target mutates valid inputs (byte flips, truncations, insertions, JSON values swapped for
others of any type, deep nesting) and checks that the parser answers only with its own refusal:
`FrameError` for chat frames, `ValidationError` for REST bodies and custom-resource specs,
`ProbeError` for audio uploads, `WireError` for replication messages. Anything else (a
TypeError, a RecursionError, a crash of the decoder) is a finding. Seeded: a failure prints the
seed and the input; `VEZA_FUZZ_SECONDS` (default 2) sets the time per target.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tests.support.audio import sine
from veza_api import bodies
from veza_chat import protocol
from veza_core import specs
from veza_stream.probe import ProbeError, probe
from veza_stream.replication import WireError, decode_batch, encode_batch
from veza_stream.transcoder import Chunk

SECONDS = float(os.environ.get("VEZA_FUZZ_SECONDS", "2"))
ODD_VALUES: list[Any] = [None, True, 0, -1, 2**63, 1e308, float("-inf"), "", "x" * 5000, "\u0000", "🎵",
                         [], [1, [2, [3]]], {}, {"a": {"b": {}}}, "../../etc/passwd", "<script>", "' OR 1=1 --"]


def budget(seed: int) -> Iterator[random.Random]:
    """One random source per iteration, until the time for this target is spent."""
    rng = random.Random(seed)
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        yield rng


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.6 and out:
            del out[rng.randrange(len(out)):][: rng.randint(1, 64)]
        elif choice < 0.8:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


def mutate_json(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """The value with some parts replaced by odd values of any type (or deeply nested ones)."""
    if rng.random() < 0.15 or depth > 6:
        odd = rng.choice(ODD_VALUES)
        return [odd] * 1 if rng.random() < 0.05 else odd
    if isinstance(value, dict):
        out = {k: mutate_json(v, rng, depth + 1) if rng.random() < 0.5 else v for k, v in value.items()
               if rng.random() > 0.1}
        if rng.random() < 0.2:
            out[rng.choice(["extra", "type", "__proto__", "spec", ""])] = rng.choice(ODD_VALUES)
        return out
    if isinstance(value, list):
        return [mutate_json(v, rng, depth + 1) for v in value] + ([rng.choice(ODD_VALUES)] if rng.random() < 0.2
                                                                     else [])
    return value


def fuzz(seed: int, make: Callable[[random.Random], Any], parse: Callable[[Any], Any],
         refusals: tuple[type[BaseException], ...]) -> int:
    tried = 0
    for rng in budget(seed):
        case = make(rng)
        try:
            parse(case)
        except refusals:
            pass
        except Exception as exc:  # a finding
            raise AssertionError(f"seed {seed}, input {case!r:.500}: {exc!r}") from exc
        tried += 1
    return tried


CHAT_FRAMES = [{"type": "send", "cid": "c1", "text": "hello", "reply_to": 3},
               {"type": "edit", "cid": "c2", "seq": 4, "text": "fixed"}, {"type": "delete", "cid": "c3", "seq": 4},
               {"type": "react", "cid": "c4", "seq": 4, "emoji": "👍", "op": "add"},
               {"type": "typing", "active": True}, {"type": "read", "seq": 9}, {"type": "history", "before": 10,
                                                                                   "limit": 20},
               {"type": "resume", "after": 3}, {"type": "ping", "ref": "p"}, {"type": "presence", "ref": "q"},
               {"type": "moderate", "action": "ban", "user": "u", "seconds": 60, "reason": "spam"}]


def test_chat_frames() -> None:
    def make(rng: random.Random) -> str:
        text = json.dumps(mutate_json(rng.choice(CHAT_FRAMES), rng))
        if rng.random() < 0.3:
            text = mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
        if rng.random() < 0.02:
            text = "[" * rng.randint(500, 5000)
        return text

    assert fuzz(1, make, protocol.parse_client_frame, (protocol.FrameError,)) > 100


REST_BODIES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (bodies.Registration, {"email": "a@b.example", "password": "0123456789", "display_name": "A"}),
    (bodies.Credentials, {"email": "a@b.example", "password": "0123456789"}),
    (bodies.RefreshRequest, {"refresh_token": "r"}), (bodies.ServiceTokenRequest, {"audience": "veza-chat"}),
    (bodies.Declaration, {"title": "Room", "visibility": "private", "members": [{"user": "u", "role": "owner"}]}),
    (bodies.Action, {"action": "ban", "user_id": "u", "reason": "r", "duration_seconds": 60}),
    (bodies.RoleGrant, {"role": "member"}),
]


def test_rest_bodies() -> None:
    def make(rng: random.Random) -> tuple[type[BaseModel], str]:
        model, body = rng.choice(REST_BODIES)
        text = json.dumps(mutate_json(body, rng))
        if rng.random() < 0.3:
            text = mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
        return model, text

    assert fuzz(2, make, lambda case: case[0].model_validate_json(case[1]), (ValidationError,)) > 100


CR_SPECS: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (specs.ChatRoomSpec, {"platformRef": {"name": "demo"}, "replicas": 2, "visibility": "private",
                          "members": [{"user": "u", "role": "owner"}], "limits": {"maxMembers": 10},
                          "retention": {"days": 3}, "moderation": {"slowModeSeconds": 2, "blockedWords": ["x"]},
                          "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}),
    (specs.StreamChannelSpec, {"platformRef": {"name": "demo"}, "source": {"type": "relay", "relay": {
        "url": "http://radio.example.com/live", "allowedHosts": ["radio.example.com"]}},
        "renditions": [{"name": "mp3-128", "codec": "mp3", "bitrateKbps": 128}],
        "delivery": {"hls": {"enabled": True, "targetDurationSeconds": 2}}, "limits": {"maxListeners": 10}}),
]


def test_custom_resource_specs() -> None:
    def make(rng: random.Random) -> tuple[type[BaseModel], Any]:
        model, spec = rng.choice(CR_SPECS)
        return model, mutate_json(spec, rng)

    assert fuzz(3, make, lambda case: case[0].model_validate(case[1]), (ValidationError,)) > 100


@pytest.fixture(scope="module")
def audio_files() -> list[bytes]:
    return [sine(440, 0.5, "mp3"), sine(440, 0.5, "ogg"), sine(440, 0.5, "aac")]


def test_audio_uploads(audio_files: list[bytes]) -> None:
    def make(rng: random.Random) -> bytes:
        return mutate_bytes(rng.choice(audio_files), rng)

    # A corrupt upload is refused with a status; the decoder never takes the worker down.
    assert fuzz(4, make, probe, (ProbeError,)) > 10


def test_replication_messages() -> None:
    """What a follower receives from NATS (a leader's batch, or anything a pod publishes there)."""
    seeds = [encode_batch({"mp3": [Chunk(b"\xff\xfb" + bytes(415), 0, 1152)],
                           "opus": [Chunk(b"OggS-header", 0, 0, header=True)], "aac": []}, "Tone"),
             encode_batch({}, "")]

    def make(rng: random.Random) -> bytes:
        return mutate_bytes(rng.choice(seeds), rng)

    assert fuzz(5, make, decode_batch, (WireError,)) > 100
