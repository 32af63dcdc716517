"""One set of spec models: what the API server admits, a worker accepts.

The CRDs are generated from the CR specs of `veza_core.specs`; workers parse their part of a spec
(VEZA_RESOURCE_SPEC) with the worker specs they extend. A value the API server admits that a
worker refused would stop the worker at start, so every bound the CRD states is tried here on
the worker models, and specs the API server defaulted are fed to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from tests.support.kube import KubeCluster
from tests.support.operator import channel, room
from veza_chat.spec import RoomSpec
from veza_core.specs import ChatRoomSpec, ChatRoomWorkerSpec, StreamChannelSpec, StreamChannelWorkerSpec
from veza_operator.crds import spec_schema
from veza_operator.wiring import OPERATOR_ONLY_FIELDS, worker_spec
from veza_stream.spec import ChannelSpec

PAIRS: list[tuple[type[BaseModel], type[BaseModel]]] = [(ChatRoomSpec, ChatRoomWorkerSpec),
                                                        (StreamChannelSpec, StreamChannelWorkerSpec)]


def sample(schema: dict[str, Any]) -> Any:
    """The least value the schema admits: required properties only, the lowest numbers, the first enum value."""
    kind = schema.get("type")
    if "default" in schema:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: sample(prop) for name, prop in schema.get("properties", {}).items()
                if name in schema.get("required", [])}
    if kind == "array":
        return [sample(schema["items"]) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return "http://upstream.test/a" if schema.get("pattern", "").startswith("^https?") else "a"


def bounded_leaves(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) for every bound of a number, string or list the CRD states, at both ends."""
    for name, prop in schema.get("properties", {}).items():
        where = (*path, name)
        if prop.get("type") == "object":
            yield from bounded_leaves(prop, where)
        elif prop.get("type") == "array" and prop["items"].get("type") == "object":
            yield from bounded_leaves(prop["items"], (*where, "[]"))
        for low, high in (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems")):
            for bound in (low, high):
                if bound in prop:
                    yield where, _at(prop, bound)


def _at(prop: dict[str, Any], bound: str) -> Any:
    n = prop[bound]
    if bound in ("minLength", "maxLength"):
        return "a" * n
    if bound in ("minItems", "maxItems"):
        return [sample(prop["items"])] * n
    return n


def with_value(base: Any, schema: dict[str, Any], path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if head == "[]":
        item = base[0] if base else sample(schema["items"])
        return [with_value(item, schema["items"], rest, value)]
    prop = schema["properties"][head]
    current = (base or {}).get(head, sample(prop) if prop.get("type") != "array" else [])
    return {**(base or {}), head: with_value(current, prop, rest, value)}


@pytest.mark.parametrize(("cr", "worker"), PAIRS, ids=["ChatRoom", "StreamChannel"])
def test_every_bound_the_api_admits_is_accepted_by_the_workers(cr: type[BaseModel], worker: type[BaseModel]) -> None:
    schema = spec_schema(cr)
    base = sample(schema) | {"platformRef": {"name": "demo"}}
    tried = 0
    for path, value in bounded_leaves(schema):
        if path[0] in OPERATOR_ONLY_FIELDS:
            continue
        spec = with_value(base, schema, path, value)
        try:
            worker.model_validate(worker_spec(spec))
            cr.model_validate(spec)
        except ValidationError as exc:
            raise AssertionError(f"the CRD admits {'.'.join(path)} = {value!r}; the models refuse it: {exc}") from None
        tried += 1
    assert tried > 10


def test_the_workers_read_the_shared_models_under_their_own_names() -> None:
    assert RoomSpec is ChatRoomWorkerSpec and ChannelSpec is StreamChannelWorkerSpec
    room_spec = RoomSpec.model_validate({"limits": {"messagesPerMinute": 6}, "members": [{"user": "ann",
                                                                                          "role": "owner"}]})
    assert room_spec.limits.messages_per_minute == 6 and room_spec.member_role("ann") == "owner"
    assert RoomSpec.model_validate({}).members == [], "an absent member list reads as empty"
    channel_spec = ChannelSpec.model_validate({"source": {"type": "live"}})
    assert channel_spec.source.fallback.playlist.tracks == [], "an absent fallback reads as empty"
    assert [r.model_dump(by_alias=True) for r in channel_spec.renditions] == [
        {"name": "mp3-128", "codec": "mp3", "bitrateKbps": 128}]


def test_workers_accept_more_than_a_cr_may_ask_where_their_tests_need_it() -> None:
    """A worker started by hand runs without a rate limit worth the name and keeps history for seconds."""
    spec = RoomSpec.model_validate({"limits": {"messagesPerMinute": 1e9},
                                    "retention": {"days": 2 / 86400, "maxMessages": 5}})
    assert spec.retention.max_messages == 5
    limits = spec_schema(ChatRoomSpec)["properties"]["limits"]["properties"]["messagesPerMinute"]
    assert (limits["type"], limits["minimum"], limits["maximum"]) == ("integer", 1, 6000)


@pytest.mark.parametrize("name", ["hls", "source", "now-playing", "tracks", "Upper", "a_b"])
def test_a_rendition_name_a_worker_refuses_is_refused_by_the_crd_model_too(name: str) -> None:
    with pytest.raises(ValidationError):
        StreamChannelWorkerSpec.model_validate({"renditions": [{"name": name, "codec": "mp3"}]})


def test_operator_only_fields_are_what_the_cr_specs_add() -> None:
    assert {"platformRef", "replicas", "autoscaling", "resources", "deletionPolicy", "placement"} == \
        OPERATOR_ONLY_FIELDS


@pytest.mark.kube
@pytest.mark.parametrize("manifest", [
    room("default", "edges", title="t" * 200,
         limits={"maxMembers": 1, "maxMessageBytes": 16, "messagesPerMinute": 6000},
         retention={"days": 36500, "maxMessages": 100}, moderation={"slowModeSeconds": 3600, "maxMentions": 100},
         visibility="private", members=[{"user": "u" * 128, "role": "owner"}], channelRef={"name": "radio"}),
    room("default", "plain"),
    channel("default", "edges", renditions=[{"name": "o", "codec": "opus", "bitrateKbps": 16},
                                            {"name": "m", "codec": "mp3", "bitrateKbps": 512}],
            delivery={"hls": {"targetDurationSeconds": 10, "partDurationSeconds": 5.0}}, limits={"maxListeners": 1},
            source={"type": "relay", "relay": {"url": "http://up.test/a"},
                    "fallback": {"playlist": {"tracks": ["x"]}}}),
    channel("default", "plain"),
], ids=["room-edges", "room-plain", "channel-edges", "channel-plain"])
def test_what_the_api_server_admits_and_defaults_a_worker_accepts(kube: KubeCluster, operator_install: object,
                                                                  manifest: dict[str, Any]) -> None:
    out = kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(manifest))
    admitted = yaml.safe_load(out)["spec"]
    worker = RoomSpec if manifest["kind"] == "ChatRoom" else ChannelSpec
    worker.model_validate(worker_spec(admitted))
