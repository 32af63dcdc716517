"""Every message on a platform's bus, captured from a real NATS and checked against the event catalog's schemas
(docs/schemas/events/v1, `veza_core.events`): the producers' side of docs/events.md."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import nats as nats_py
from nats.aio.client import Client

from tests.support.waiting import wait_for
from veza_core import events

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "events" / "v1"


def validator(entry: events.Subject) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{entry.name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATORS = {entry.kind: validator(entry) for entry in events.CATALOG}


def check(subject: str, data: bytes) -> tuple[events.Subject, Any]:
    """The catalog entry of `subject` and the decoded payload; fails unless the subject is in the catalog and the
    payload is valid against the committed schema (binary payloads are the stream tests' to decode)."""
    entry = events.by_subject(subject)
    assert entry is not None, f"{subject} is not in the event catalog"
    if entry.content_type == "application/octet-stream":
        return entry, data
    body: Any = json.loads(data) if entry.content_type == "application/json" else data.decode()
    errors = sorted(VALIDATORS[entry.kind].iter_errors(body), key=str)
    assert not errors, f"{subject}: {errors[0].message} in {body!r:.300}"
    return entry, body


class Capture:
    """Subscribes to `veza.<platform>.>` and validates every message as it arrives."""

    def __init__(self) -> None:
        self.nc: Client | None = None
        self.received: list[tuple[str, Any]] = []
        self.seen: Counter[str] = Counter()  # by subject kind
        self.invalid: list[str] = []

    async def start(self, url: str, platform: str, **connect: Any) -> Capture:
        self.nc = await nats_py.connect(url, **connect)
        await self.nc.subscribe(f"veza.{platform}.>", cb=self._on_message)
        await self.nc.flush()
        return self

    async def _on_message(self, msg: Any) -> None:
        try:
            entry, body = check(msg.subject, msg.data)
        except AssertionError as exc:  # kept for the test to report: a callback's exception would be lost
            self.invalid.append(str(exc))
            return
        self.seen[entry.kind] += 1
        self.received.append((msg.subject, body))

    def bodies(self, kind: str) -> list[Any]:
        return [body for subject, body in self.received if getattr(events.by_subject(subject), "kind", None) == kind]

    async def wait_for(self, kind: str, timeout: float = 10.0, **expected: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            assert not self.invalid, self.invalid
            return next((b for b in self.bodies(kind) if all(b.get(k) == v for k, v in expected.items())), None)

        return await wait_for(found, timeout=timeout, message=f"a {kind} event with {expected}")

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        assert not self.invalid, self.invalid
