"""Protocol ``veza.chat.v1``: client frame validation, server frame builders, stable error codes.

The normative description is docs/chat-protocol.md with JSON Schemas in docs/schemas/chat/v1/;
the tests validate every frame they send and receive against those schemas. Validation here is
hand-written (it runs for every frame) and accepts exactly what the client schema accepts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PROTOCOL = "veza.chat.v1"

# Batched delivery (docs/chat-protocol.md, "Batched delivery"): a client that connects with `?batch=1` gets the
# live events of a short window in one `events` frame (the same event objects, in seq order) instead of one `event`
# frame each. The bounds are the server's; the welcome frame tells them to the client that asked.
BATCH_QUERY = "batch"
BATCH_MAX_EVENTS = 256  # events in one `events` frame
BATCH_MAX_BYTES = 64 * 1024  # bytes of one `events` frame's JSON, unless a single event is larger (it goes alone)
BATCH_MIN_DELAY = 0.005  # seconds an event waits for others to join its frame, at least...
# ...and at most: each group of a room's batching sockets is written to again at most this long after its previous
# write began (unless that write alone took longer).
BATCH_MAX_DELAY = 0.2
EVENTS_HEAD = b'{"type":"events","events":['
EVENTS_TAIL = b"]}"

# Stable error codes (error frames and HTTP error bodies).
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
BINARY_FRAME = "binary_frame"
UNKNOWN_TYPE = "unknown_type"
MESSAGE_TOO_LARGE = "message_too_large"
RATE_LIMITED = "rate_limited"
SLOW_MODE = "slow_mode"
FLOOD = "flood"
MUTED = "muted"
BANNED = "banned"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
BLOCKED_WORD = "blocked_word"
TOO_MANY_MENTIONS = "too_many_mentions"
STORE_UNAVAILABLE = "store_unavailable"
SHUTTING_DOWN = "shutting_down"
ROOM_FULL = "room_full"
NOT_MEMBER = "not_member"
SESSION_REVOKED = "session_revoked"
ROOM_MOVED = "room_moved"  # HTTP 503 from a pool worker: the room now has its own workers

# Close codes.
CLOSE_SERVICE_RESTART = 1012
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_KICKED = 4001
CLOSE_BANNED = 4003
CLOSE_TOKEN_EXPIRED = 4004
CLOSE_SESSION_REVOKED = 4005  # logout, a reused refresh token, an account disabled: sign in again
CLOSE_ROLE_REMOVED = 4006  # no role left in this private room: reconnecting is refused (403 not_member)

MAX_CID = 64
MAX_REF = 64
MAX_EMOJI = 32
MAX_USER = 128
MAX_REASON = 500
MAX_HISTORY = 200

CLIENT_TYPES = frozenset({"send", "edit", "delete", "react", "typing", "read", "resume", "history", "presence",
                          "moderate", "ping", "react_at"})
MAX_POSITION = 1e11  # stream positions are Unix times in seconds: beyond the year 5000 is not one
MODERATION_ACTIONS = frozenset({"mute", "unmute", "kick", "ban", "unban"})


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Made once: `json.dumps` with options builds a new encoder per call, a quarter of an ack frame's encoding time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def _str(frame: dict[str, Any], key: str, max_len: int, *, required: bool = True, min_len: int = 1) -> str | None:
    value = frame.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not (min_len <= len(value) <= max_len):
        raise FrameError(BAD_FRAME, f"'{key}' must be a string of {min_len}..{max_len} characters")
    return value


def _int(frame: dict[str, Any], key: str, *, required: bool = True, minimum: int = 0,
         maximum: int = 2**63 - 1) -> int | None:
    value = frame.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not (minimum <= value <= maximum):
        raise FrameError(BAD_FRAME, f"'{key}' must be an integer in {minimum}..{maximum}")
    return value


def parse_client_frame(raw: str) -> dict[str, Any]:
    """The frame as a dict with validated fields, or FrameError with a stable code."""
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise FrameError(BAD_JSON, "the frame is not valid JSON") from exc
    except RecursionError as exc:  # `[[[[…]]]]`: a few kilobytes of brackets exhaust the parser's stack
        raise FrameError(BAD_JSON, "the frame nests too deeply") from exc
    if not isinstance(frame, dict):
        raise FrameError(BAD_FRAME, "a frame is a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise FrameError(BAD_FRAME, "'type' is required")
    if kind not in CLIENT_TYPES:
        raise FrameError(UNKNOWN_TYPE, "unknown frame type")
    if kind == "send":
        _str(frame, "cid", MAX_CID)
        if not isinstance(frame.get("text"), str) or not frame["text"]:
            raise FrameError(BAD_FRAME, "'text' must be a non-empty string")
        _int(frame, "reply_to", required=False, minimum=1)
    elif kind == "edit":
        _str(frame, "cid", MAX_CID)
        _int(frame, "seq", minimum=1)
        if not isinstance(frame.get("text"), str) or not frame["text"]:
            raise FrameError(BAD_FRAME, "'text' must be a non-empty string")
    elif kind == "delete":
        _str(frame, "cid", MAX_CID)
        _int(frame, "seq", minimum=1)
    elif kind == "react":
        _str(frame, "cid", MAX_CID)
        _int(frame, "seq", minimum=1)
        _str(frame, "emoji", MAX_EMOJI)
        if frame.get("op", "add") not in ("add", "remove"):
            raise FrameError(BAD_FRAME, "'op' is add or remove")
    elif kind == "typing":
        if not isinstance(frame.get("active", True), bool):
            raise FrameError(BAD_FRAME, "'active' must be a boolean")
    elif kind == "read":
        _int(frame, "seq", minimum=0)
    elif kind == "resume":
        _int(frame, "after", minimum=0)
    elif kind == "history":
        _str(frame, "ref", MAX_REF, required=False)
        _int(frame, "before", required=False, minimum=1)
        _int(frame, "after", required=False, minimum=0)
        _int(frame, "limit", required=False, minimum=1, maximum=MAX_HISTORY)
    elif kind == "moderate":
        action = frame.get("action")
        if not isinstance(action, str) or action not in MODERATION_ACTIONS:  # a dict is unhashable: TypeError
            raise FrameError(BAD_FRAME, "'action' is one of " + ", ".join(sorted(MODERATION_ACTIONS)))
        _str(frame, "user", MAX_USER)
        _int(frame, "seconds", required=False, minimum=1, maximum=10 * 365 * 86400)
        _str(frame, "reason", MAX_REASON, required=False, min_len=0)
    elif kind == "react_at":
        _str(frame, "emoji", MAX_EMOJI)
        position = frame.get("position")
        if not isinstance(position, (int, float)) or isinstance(position, bool) or not 0 < position <= MAX_POSITION:
            raise FrameError(BAD_FRAME, "'position' must be a stream time: Unix seconds, a positive number")
    elif kind in ("ping", "presence"):
        _str(frame, "ref", MAX_REF, required=False)
    return frame


def batch_requested(query: Mapping[str, str]) -> bool:
    """Whether the handshake's query asks for batched delivery (`batch=1`); anything else keeps one frame per
    event, as clients written before batching expect."""
    return query.get(BATCH_QUERY) == "1"


def batch_terms() -> dict[str, int]:
    """The welcome's `batch` member: the bounds of the `events` frames this socket will get."""
    return {"max_events": BATCH_MAX_EVENTS, "max_bytes": BATCH_MAX_BYTES,
            "max_delay_ms": round(BATCH_MAX_DELAY * 1000)}


def events_payloads(payloads: list[bytes]) -> list[bytes]:
    """`events` frames (JSON text, UTF-8) carrying the already-encoded `event` frames `payloads` in order, split
    so that none holds more than BATCH_MAX_EVENTS events or BATCH_MAX_BYTES bytes (one event larger than that
    travels alone). Nothing is parsed or encoded again: the event objects are joined as they are."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = len(EVENTS_HEAD) + len(EVENTS_TAIL)
    for payload in payloads:
        grown = size + len(payload) + (1 if chunk else 0)
        if chunk and (len(chunk) == BATCH_MAX_EVENTS or grown > BATCH_MAX_BYTES):
            out.append(EVENTS_HEAD + b",".join(chunk) + EVENTS_TAIL)
            chunk, grown = [], len(EVENTS_HEAD) + len(EVENTS_TAIL) + len(payload)
        chunk.append(payload)
        size = grown
    if chunk:
        out.append(EVENTS_HEAD + b",".join(chunk) + EVENTS_TAIL)
    return out


def error_frame(code: str, message: str, **extra: Any) -> str:
    return dumps({"type": "error", "code": code, "message": message,
                  **{k: v for k, v in extra.items() if v is not None}})
