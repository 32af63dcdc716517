"""protocol.parse_client_frame alone: what it returns for every client frame type, and the stable
code of the FrameError it raises for malformed JSON, wrong types, oversize fields and unknown types; and `dumps`,
the server frames' encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from veza_chat import protocol as p

VALID: list[dict[str, Any]] = [
    {"type": "send", "cid": "c1", "text": "hello"},
    {"type": "send", "cid": "c" * p.MAX_CID, "text": "a reply", "reply_to": 1},
    {"type": "edit", "cid": "e1", "seq": 1, "text": "fixed"},
    {"type": "delete", "cid": "d1", "seq": 3},
    {"type": "react", "cid": "r1", "seq": 2, "emoji": "👍"},
    {"type": "react", "cid": "r2", "seq": 2, "emoji": "👍", "op": "remove"},
    {"type": "typing"},
    {"type": "typing", "active": False},
    {"type": "read", "seq": 0},
    {"type": "resume", "after": 0},
    {"type": "history"},
    {"type": "history", "ref": "h", "before": 10, "after": 0, "limit": p.MAX_HISTORY},
    {"type": "presence"},
    {"type": "presence", "ref": "p"},
    {"type": "moderate", "action": "mute", "user": "troll", "seconds": 60, "reason": ""},
    {"type": "moderate", "action": "unban", "user": "troll"},
    {"type": "ping"},
    {"type": "ping", "ref": "x"},
    {"type": "ping", "extra": "unknown members are kept, not refused"},
    {"type": "react_at", "emoji": "👍", "position": 1764661234.5},
]


def test_every_client_type_has_a_valid_case() -> None:
    assert {f["type"] for f in VALID} == p.CLIENT_TYPES


@pytest.mark.parametrize("frame", VALID, ids=lambda f: f["type"])
def test_valid_frames_come_back_as_sent(frame: dict[str, Any]) -> None:
    assert p.parse_client_frame(json.dumps(frame)) == frame


def code_of(raw: str) -> str:
    with pytest.raises(p.FrameError) as err:
        p.parse_client_frame(raw)
    assert err.value.message and str(err.value) == err.value.message
    return err.value.code


@pytest.mark.parametrize("raw", ["{not json", "", '{"type": "ping"', "nan-sense", b"\xff\xfe".decode("latin-1")])
def test_malformed_json_is_bad_json(raw: str) -> None:
    assert code_of(raw) == p.BAD_JSON


def test_a_moderation_action_of_another_type_is_bad_frame() -> None:
    # Found by tests/fuzz: an object as the action raised TypeError (unhashable), not FrameError.
    for action in ({"a": 1}, ["ban"], 5, None):
        assert code_of(json.dumps({"type": "moderate", "action": action, "user": "u"})) == p.BAD_FRAME


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    assert code_of("[" * 100_000 + "]" * 100_000) == p.BAD_JSON
    assert code_of('{"type": "send", "cid": "c", "text": ' + "{\"a\": " * 5000 + "1" + "}" * 5001) == p.BAD_JSON


@pytest.mark.parametrize("raw", ['"just a string"', "[1, 2]", "42", "null", "true"])
def test_a_frame_is_an_object(raw: str) -> None:
    assert code_of(raw) == p.BAD_FRAME


@pytest.mark.parametrize("frame", [{}, {"type": 5}, {"type": None}, {"type": ["send"]}], ids=str)
def test_type_is_a_required_string(frame: dict[str, Any]) -> None:
    assert code_of(json.dumps(frame)) == p.BAD_FRAME


@pytest.mark.parametrize("kind", ["dance", "SEND", "", "welcome", "ack", "error"])
def test_unknown_types_and_server_types_are_unknown_type(kind: str) -> None:
    assert code_of(json.dumps({"type": kind})) == p.UNKNOWN_TYPE


WRONG: list[dict[str, Any]] = [
    # missing or mistyped required fields
    {"type": "send", "text": "no cid"},
    {"type": "send", "cid": "x"},
    {"type": "send", "cid": "x", "text": 5},
    {"type": "send", "cid": "x", "text": ""},
    {"type": "send", "cid": 7, "text": "t"},
    {"type": "send", "cid": "x", "text": "t", "reply_to": 0},
    {"type": "send", "cid": "x", "text": "t", "reply_to": "1"},
    {"type": "edit", "cid": "e", "seq": True, "text": "t"},
    {"type": "edit", "cid": "e", "seq": 1},
    {"type": "edit", "cid": "e", "text": "t"},
    {"type": "delete", "cid": "d", "seq": 0},
    {"type": "delete", "seq": 1},
    {"type": "react", "cid": "r", "seq": 1},
    {"type": "react", "cid": "r", "seq": 1, "emoji": ""},
    {"type": "react", "cid": "r", "seq": 1, "emoji": "👍", "op": "toggle"},
    {"type": "typing", "active": "yes"},
    {"type": "read", "seq": -1},
    {"type": "read", "seq": 1.5},
    {"type": "read"},
    {"type": "resume"},
    {"type": "resume", "after": "0"},
    {"type": "history", "before": 0},
    {"type": "history", "after": -1},
    {"type": "history", "limit": 0},
    {"type": "history", "ref": 1},
    {"type": "presence", "ref": ""},
    {"type": "ping", "ref": 5},
    {"type": "moderate", "action": "nuke", "user": "u"},
    {"type": "moderate", "action": "mute"},
    {"type": "moderate", "action": "mute", "user": "u", "seconds": 0},
    {"type": "moderate", "action": "mute", "user": "u", "reason": 3},
    # oversize fields
    {"type": "send", "cid": "c" * (p.MAX_CID + 1), "text": "t"},
    {"type": "react", "cid": "r", "seq": 1, "emoji": "e" * (p.MAX_EMOJI + 1)},
    {"type": "history", "limit": p.MAX_HISTORY + 1},
    {"type": "history", "limit": 100000},
    {"type": "ping", "ref": "r" * (p.MAX_REF + 1)},
    {"type": "moderate", "action": "ban", "user": "u" * (p.MAX_USER + 1)},
    {"type": "moderate", "action": "ban", "user": "u", "reason": "r" * (p.MAX_REASON + 1)},
    {"type": "moderate", "action": "mute", "user": "u", "seconds": 10 * 365 * 86400 + 1},
    {"type": "read", "seq": 2**63},
    {"type": "react_at", "emoji": "👍"},
    {"type": "react_at", "emoji": "👍", "position": 0},
    {"type": "react_at", "emoji": "👍", "position": "1764661234.5"},
    {"type": "react_at", "emoji": "👍", "position": True},
    {"type": "react_at", "emoji": "👍", "position": 1e12},
    {"type": "react_at", "emoji": "e" * (p.MAX_EMOJI + 1), "position": 1.0},
]


@pytest.mark.parametrize("frame", WRONG, ids=lambda f: json.dumps(f)[:60])
def test_wrong_or_oversize_fields_are_bad_frame(frame: dict[str, Any]) -> None:
    assert code_of(json.dumps(frame)) == p.BAD_FRAME


def test_message_text_size_is_the_rooms_business_not_the_parsers() -> None:
    """maxMessageBytes is per room: the session checks it (message_too_large), the parser does not."""
    frame = {"type": "send", "cid": "big", "text": "é" * 100_000}
    assert p.parse_client_frame(json.dumps(frame)) == frame


def test_error_frame_drops_empty_extras() -> None:
    assert json.loads(p.error_frame(p.RATE_LIMITED, "too many", cid="c", retry_after=1.5, ref=None)) == {
        "type": "error", "code": "rate_limited", "message": "too many", "cid": "c", "retry_after": 1.5}


def test_frames_are_compact_json_with_text_as_written() -> None:
    """What clients and the recent-events cache receive: no spaces, non-ASCII text as UTF-8 (not \\u escapes),
    and the shared encoder gives each call its own answer."""
    assert p.dumps({"type": "ack", "seq": 7, "text": "héllo 👋"}) == '{"type":"ack","seq":7,"text":"héllo 👋"}'
    assert p.dumps({"a": [1, {"b": None}]}) == '{"a":[1,{"b":null}]}'
    assert json.loads(p.dumps({"type": "event", "seq": 8})) == {"type": "event", "seq": 8}
