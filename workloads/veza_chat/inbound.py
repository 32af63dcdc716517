"""What the chat worker accepts from the bus, and in what shape (docs/chat-protocol.md, "From the bus").

Every message from NATS is another pod's word: the shapes below are checked (types, sizes, bounds)
before anything reaches a socket, and what fails is dropped and counted in
``veza_bus_rejected_total{subject_kind, reason}`` (see `veza_core.bus.reject`). Frames a peer asks
this replica to relay are rebuilt from their validated fields, never passed on as received.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

from veza_core import bus
from veza_core.events import (  # noqa: F401 - the shapes accepted from the bus are the catalog's
    WORKER_ID,
    FrameSignal,
    Membership,
    ModerationSignal,
    PresenceSignal,
    Revoked,
    Signal,
)

from . import protocol as p

# Subject kinds, as counted in veza_bus_rejected_total.
EVENTS = "room.events"
SIGNALS = "room.signals"
REVOKED = "user.revoked"
MEMBERSHIP = "room.membership"
LIFECYCLE = "room.lifecycle"

MAX_SIGNAL_BYTES = 64 * 1024
MAX_CONTROL_BYTES = 4096  # revocations and membership changes are a few ids
# How far past what a replica knows (delivered, or committed per PostgreSQL) a seq from a peer may be: a
# replica catching up after an outage is well within it, 2**62 (which would stop delivery) is not.
SEQ_WINDOW = 1_000_000

UserId = Annotated[str, StringConstraints(min_length=1, max_length=p.MAX_USER)]
Name = Annotated[str, StringConstraints(max_length=256)]
Epoch = Annotated[float, Field(ge=0, le=1e11)]  # seconds; beyond the year 5000 is not a time


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _User(_Strict):
    id: UserId
    name: Name


class TypingFrame(_Strict):
    type: Literal["typing"]
    user: _User
    active: bool


class ReadFrame(_Strict):
    type: Literal["read"]
    user: _User
    seq: Annotated[int, Field(ge=0, le=2**53)]


class RelayedFrame(RootModel[TypingFrame | ReadFrame]):
    """The ephemeral frames a replica relays to the others' sockets (`ChatService.emit`)."""

    root: Annotated[TypingFrame | ReadFrame, Field(discriminator="type")]


class ModerationFrame(_Strict):
    type: Literal["moderation"]
    action: Literal["mute", "unmute", "kick", "ban", "unban"]
    user: UserId
    by: UserId
    until: Annotated[int, Field(ge=0, le=10**14)] | None = None
    reason: Annotated[str, StringConstraints(max_length=p.MAX_REASON)] | None = None


def inner_frame(model: type[RelayedFrame] | type[ModerationFrame], text: str) -> dict[str, Any] | None:
    """A frame carried inside a signal, validated and rebuilt (None, counted, when it is not valid)."""
    try:
        frame = model.model_validate(json.loads(text))
    except (ValueError, RecursionError):  # ValidationError is a ValueError
        bus.reject(SIGNALS, "invalid_frame")
        return None
    dumped: dict[str, Any] = frame.model_dump(exclude_none=True)
    return dumped


def event_line(line: str) -> tuple[int, str, int | None] | None:
    """One line `<seq> <ts ms or -> <event frame>` of a fan-out message, or None when it is not one. The frame is
    not parsed (replicas never parse what the committing replica encoded), but it must be an `event` frame of that
    very seq: a peer cannot pass off another frame type, or one event under another's seq."""
    parts = line.split(" ", 2)
    if len(parts) != 3:
        return None
    seq_text, ts_text, frame = parts
    if not (seq_text.isdigit() and len(seq_text) <= 19) or not (ts_text == "-" or (ts_text.isdigit()
                                                                                    and len(ts_text) <= 15)):
        return None
    seq = int(seq_text)
    if seq < 1 or not frame.startswith(f'{{"type":"event","seq":{seq},') or not frame.endswith("}"):
        return None
    return seq, frame, None if ts_text == "-" else int(ts_text)

