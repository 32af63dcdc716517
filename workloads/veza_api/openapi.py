"""The OpenAPI 3.1 document of the API, served at /api/v1/openapi.json.

Request bodies come from the pydantic models the handlers parse with, so they
cannot drift; response shapes are written here, and the test suite validates
every answer it receives against them (tests/support/api.py) and checks
that every route is documented.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from veza_core.web import json_response

from .bodies import (
    Action,
    Credentials,
    Declaration,
    LinkRequest,
    LinkToken,
    ProfileUpdate,
    RefreshRequest,
    Registration,
    RoleGrant,
    ServiceTokenRequest,
    UserUpdate,
)

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


STR, INT, BOOL, NUM = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"}
TIME = {"type": "string", "format": "date-time"}
DATE = {"type": "string", "format": "date"}
UUID = {"type": "string", "format": "uuid"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj({"error": obj({"code": STR, "message": STR})}),
    "User": obj({"id": UUID, "email": STR, "display_name": STR, "roles": {"type": "array", "items": STR},
                 "disabled": BOOL, "created_at": TIME,
                 "email_verified": {"type": "boolean", "description": "the owner proved the address (a confirmed "
                                    "registration, a magic link or OIDC); unverified accounts never become admin"}}),
    "Me": {"allOf": [ref("User"), obj({"resources": {"type": "object", "additionalProperties": STR,
                                                      "description": 'roles per resource, e.g. {"room/general": '
                                                                     '"moderator"}'}})]},
    "UserPage": obj({"users": {"type": "array", "items": ref("User")}, "next_after": nullable(UUID)}),
    "TokenPair": obj({"access_token": STR, "token_type": {"const": "Bearer"}, "expires_in": INT,
                      "refresh_token": STR, "user_id": UUID}),
    "ServiceToken": obj({"token": STR, "audience": {"enum": ["veza-chat", "veza-stream"]}, "expires_in": INT}),
    "JWKS": obj({"keys": {"type": "array", "items": obj({"kty": STR, "kid": STR, "alg": STR})}}),
    "Room": obj({"name": STR, "title": STR, "visibility": {"enum": ["public", "private"]}, "updated_at": TIME},
                {"member_count": nullable(INT), "your_role": nullable({"enum": ["owner", "moderator", "member"]}),
                 "channel": nullable({"type": "string", "description": "the StreamChannel to listen along with "
                                      "(to users: only when that channel is public)"})}),
    "RoomList": obj({"rooms": {"type": "array", "items": ref("Room")}}),
    # A room as admins and the operator see it (never users): where its workers run and their spec.
    "DeclaredRoom": {"allOf": [ref("Room"), obj({
        "placement": {"enum": ["pooled", "dedicated"], "description": "the chat pool or the room's own workers"},
        "spec": nullable({"type": "object", "description": "the ChatRoom's worker spec as declared (camelCase), "
                          "which a pool worker serves the room with; null: never declared"})})]},
    "DeclaredRoomList": obj({"rooms": {"type": "array", "items": ref("DeclaredRoom")}}),
    "RoomLoad": obj({"rooms": {"type": "array", "items": obj({
        "name": STR, "connections": INT,
        "messages_per_second": {"type": "number", "minimum": 0,
                                "description": "sequenced events committed per second"},
        "replicas": {"type": "integer", "description": "chat replicas that reported the room"}})},
        "window_seconds": {"type": "number", "description": "a replica's snapshot counts for this long"}}),
    "Channel": obj({"name": STR, "title": STR, "visibility": {"enum": ["public", "private"]}, "updated_at": TIME},
                   {"now_playing": nullable({"type": "object", "additionalProperties": STR}),
                    "your_role": nullable({"enum": ["broadcaster", "listener"]}),
                    "renditions": nullable({"type": "array", "items": obj({"name": STR, "codec": STR}),
                                            "description": "what its players may ask for (null: not "
                                                           "declared)"})}),
    "ChannelList": obj({"channels": {"type": "array", "items": ref("Channel")}}),
    "ModerationAction": obj({"id": INT, "room": STR, "user_id": UUID,
                             "action": {"enum": ["ban", "unban", "mute", "unmute"]}, "reason": STR,
                             "until": nullable(TIME), "created_at": TIME}),
    "ModerationList": obj({"actions": {"type": "array", "items": ref("ModerationAction")}}),
    "Track": obj({"id": UUID, "title": STR, "owner_id": UUID, "object_key": STR, "content_type": STR,
                  "size_bytes": INT, "duration_s": NUM, "codec": STR, "container": STR,
                  "sample_rate": nullable(INT), "channels": nullable(INT), "created_at": TIME}),
    "TrackList": obj({"tracks": {"type": "array", "items": ref("Track")}}),
    "AuditEntry": obj({"id": INT, "at": TIME, "event": STR, "actor_id": nullable(UUID), "subject": nullable(STR),
                       "ip": nullable(STR), "request_id": nullable(STR), "details": {"type": "object"}}),
    "AuditPage": obj({"entries": {"type": "array", "items": ref("AuditEntry")}, "next_before": nullable(INT)}),
    # Analytics (docs/analytics.md): times in UTC, hours and days as their start.
    "MessageSeries": obj({"series": {"type": "array", "items": obj({"room": STR, "hour": TIME, "messages": INT})}}),
    "ActiveUsers": obj({"days": {"type": "array", "items": obj({"day": DATE, "users": INT})}}),
    "ListeningSeries": obj({"series": {"type": "array", "items": obj(
        {"channel": STR, "rendition": STR, "hour": TIME, "minutes": NUM})}}),
    "Peaks": obj({"peaks": {"type": "array", "items": obj(
        {"kind": {"enum": ["listeners", "connections"]},
         "scope": {"type": "string", "description": "the channel (listeners) or the room (connections)"},
         "day": DATE, "peak": INT, "at": {**TIME, "description": "when the peak was first reached"}})}}),
    "TopTracks": obj({"tracks": {"type": "array", "items": obj(
        {"channel": STR, "title": STR, "track_id": nullable(STR),
         "plays": {"type": "integer", "description": "every play since the store began"}, "last_played": TIME})}}),
    "MagicLinkSent": obj({"status": {"const": "sent"}, "expires_in": INT}),
    "RegistrationAccepted": obj({"status": {"const": "check_email"}}),
}

REQUEST_MODELS: list[type[BaseModel]] = [Registration, Credentials, RefreshRequest, ProfileUpdate,
                                         ServiceTokenRequest, Declaration, RoleGrant, UserUpdate, Action,
                                         LinkRequest, LinkToken]

ERROR_TEXT = {400: "malformed request", 401: "no valid access token", 403: "not allowed for this caller",
              404: "not found", 409: "conflict", 413: "body too large", 415: "unsupported media",
              422: "invalid body or parameters", 429: "rate limited (see Retry-After)",
              502: "upstream unavailable", 503: "dependency unavailable"}


def path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or STR}


def query(name: str, schema: dict[str, Any] | None = None, description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or STR, "description": description}


def op(summary: str, ok: dict[int, str | None], *, auth: str = "required", body: type[BaseModel] | None = None,
       errors: tuple[int, ...] = (), params: list[dict[str, Any]] | None = None,
       raw_body: str | None = None) -> dict[str, Any]:
    """One operation. `auth`: required | optional | none; `ok`: status -> schema name (None: no body)."""
    responses: dict[str, Any] = {}
    for status, schema in ok.items():
        responses[str(status)] = ({"description": "success"} if schema is None else
                                  {"description": "success", "content": {"application/json": {"schema": ref(schema)}}})
    codes = set(errors) | {429}
    if auth == "required":
        codes |= {401}
    elif auth == "optional":
        codes |= {401}  # only when a token is sent and is invalid
    if body is not None or raw_body is not None:
        codes |= {400, 413, 422}
    for status in sorted(codes):
        responses[str(status)] = {"description": ERROR_TEXT[status],
                                  "content": {"application/json": {"schema": ref("Error")}}}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if auth == "required":
        operation["security"] = [{"bearer": []}]
    elif auth == "optional":
        operation["security"] = [{}, {"bearer": []}]
    else:
        operation["security"] = []
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": ref(body.__name__)}}}
    if raw_body is not None:
        operation["requestBody"] = {"required": True, "description": raw_body,
                                    "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}}}
    if params:
        operation["parameters"] = params
    return operation


NAME = [path_param("name", {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"})]
MEMBER = [*NAME, path_param("user_id", UUID)]
ID = [path_param("id", UUID)]
# The analytics routes' window, [from, to) in UTC: a date as `to` includes that day.
WINDOW = [query("from", {"type": "string"}, "ISO date or datetime (UTC unless it has an offset); "
                "default: 7 days before `to`; the window spans at most 366 days"),
          query("to", {"type": "string"}, "ISO date (that day included) or datetime; default: now")]


def paths() -> dict[str, dict[str, Any]]:
    v1 = "/api/v1"
    return {
        "/.well-known/jwks.json": {"get": op("Public keys verifying Veza tokens (all keys valid now)",
                                             {200: "JWKS"}, auth="none")},
        f"{v1}/openapi.json": {"get": op("This document", {200: None}, auth="none")},
        f"{v1}/auth/register": {"post": op(
            "Create an account with a password. The same 202 whether or not the address has an account: a new one "
            "is mailed a link to confirm it (redeemed with the password), an existing one's owner a login link",
            {202: "RegistrationAccepted"}, auth="none", body=Registration, errors=(503,))},
        f"{v1}/auth/login": {"post": op("Log in with email and password", {200: "TokenPair"}, auth="none",
                                        body=Credentials, errors=(401,))},
        f"{v1}/auth/refresh": {"post": op("Rotate a refresh token (reuse revokes the session)", {200: "TokenPair"},
                                          auth="none", body=RefreshRequest, errors=(401,))},
        f"{v1}/auth/logout": {"post": op("End the session of this access token", {204: None})},
        f"{v1}/auth/service-token": {"post": op("A short token for the chat or stream service, with roles",
                                                {200: "ServiceToken"}, body=ServiceTokenRequest)},
        f"{v1}/auth/magic-link": {"post": op("Email a single-use login link", {202: "MagicLinkSent"}, auth="none",
                                             body=LinkRequest, errors=(503,))},
        f"{v1}/auth/magic-link/verify": {"post": op("Log in with a mailed link's token (a registration's link "
                                                    "also needs the account's password)", {200: "TokenPair"},
                                                    auth="none", body=LinkToken, errors=(401,))},
        f"{v1}/auth/oidc/login": {"get": op("Start OIDC login: redirects (302) to the provider and sets the "
                                            "pending-login cookie (HttpOnly, SameSite=Lax) the callback requires",
                                            {302: None},
                                            auth="none", errors=(404, 502))},
        f"{v1}/auth/oidc/callback": {"get": op(
            "OIDC redirect target, in the browser that started the login (its pending-login cookie must match "
            "`state`): exchanges the code (PKCE) and answers with Veza tokens", {200: "TokenPair"},
            auth="none", errors=(400, 401, 403, 404),
            params=[query("code"), query("state"), query("error")])},
        f"{v1}/me": {"get": op("The caller's profile and resource roles", {200: "Me"}, errors=(404,)),
                     "patch": op("Change the caller's display name", {200: "User"}, body=ProfileUpdate,
                                 errors=(404,))},
        f"{v1}/rooms": {"get": op("Rooms the caller may see, with live member counts", {200: "RoomList"},
                                  auth="optional")},
        f"{v1}/rooms/{{name}}": {"get": op("One room", {200: "Room"}, auth="optional", errors=(404,), params=NAME)},
        f"{v1}/rooms/{{name}}/members/{{user_id}}": {
            "put": op("Grant a room role (owners: any; moderators: member)", {204: None}, body=RoleGrant,
                      errors=(403, 404), params=MEMBER),
            "delete": op("Revoke a room role", {204: None}, errors=(403, 404), params=MEMBER)},
        f"{v1}/rooms/{{name}}/moderation": {
            "post": op("Ban, unban, mute or unmute a user in the room", {201: "ModerationAction"}, body=Action,
                       errors=(403, 404), params=NAME),
            "get": op("Latest moderation actions of the room", {200: "ModerationList"}, errors=(403, 404),
                      params=NAME)},
        f"{v1}/channels": {"get": op("Channels the caller may see", {200: "ChannelList"}, auth="optional")},
        f"{v1}/channels/{{name}}": {"get": op("One channel, with what it is playing now", {200: "Channel"},
                                              auth="optional", errors=(404,), params=NAME)},
        f"{v1}/channels/{{name}}/members/{{user_id}}": {
            "put": op("Grant a channel role (admins)", {204: None}, body=RoleGrant, errors=(403, 404),
                      params=MEMBER),
            "delete": op("Revoke a channel role (admins)", {204: None}, errors=(403, 404), params=MEMBER)},
        f"{v1}/tracks": {
            "post": op("Upload a track (raw audio body; admins and broadcasters)", {201: "Track"},
                       raw_body="the audio file", errors=(403, 415, 503), params=[query("title")]),
            "get": op("Tracks (admins and broadcasters)", {200: "TrackList"}, errors=(403,))},
        f"{v1}/tracks/{{id}}": {
            "get": op("One track", {200: "Track"}, errors=(403, 404), params=ID),
            "delete": op("Delete a track and its derived files (owner or admin)", {204: None}, errors=(403, 404),
                         params=ID)},
        f"{v1}/admin/users": {"get": op("Users, by id (keyset pages)", {200: "UserPage"}, errors=(400, 403, 404),
                                        params=[query("after", UUID), query("limit", INT), query("email")])},
        f"{v1}/admin/users/{{id}}": {"patch": op("Set platform roles or disable a user", {200: "User"},
                                                 body=UserUpdate, errors=(403, 404), params=ID)},
        f"{v1}/admin/rooms": {"get": op("Every room, private ones included (admins and the operator)",
                                        {200: "DeclaredRoomList"}, errors=(403,))},
        f"{v1}/admin/rooms/load": {"get": op(
            "Connections and messages per second of every room the chat workers reported within the window, "
            "summed over their replicas (admins and the operator)", {200: "RoomLoad"}, errors=(403,))},
        f"{v1}/admin/channels": {"get": op("Every channel, private ones included (admins and the operator)",
                                           {200: "ChannelList"}, errors=(403,))},
        f"{v1}/admin/rooms/{{name}}": {
            "put": op("Declare or update a room (from its ChatRoom)", {200: "DeclaredRoom", 201: "DeclaredRoom"},
                      body=Declaration, errors=(403, 404), params=NAME),
            "delete": op("Remove a room", {204: None}, errors=(403, 404), params=NAME)},
        f"{v1}/admin/channels/{{name}}": {
            "put": op("Declare or update a channel (from its StreamChannel)", {200: "Channel", 201: "Channel"},
                      body=Declaration, errors=(403, 404), params=NAME),
            "delete": op("Remove a channel", {204: None}, errors=(403, 404), params=NAME)},
        f"{v1}/admin/audit": {"get": op("The audit log, newest first", {200: "AuditPage"}, errors=(400, 403, 404),
                                        params=[query("event"), query("actor", UUID), query("subject"),
                                                query("before", INT), query("limit", INT)])},
        f"{v1}/admin/analytics/messages": {"get": op(
            "Messages per room per hour (admins)", {200: "MessageSeries"}, errors=(400, 403, 503),
            params=[*WINDOW, query("room", description="only this room")])},
        f"{v1}/admin/analytics/active-users": {"get": op(
            "Users who sent a message, per day (admins)", {200: "ActiveUsers"}, errors=(400, 403, 503),
            params=WINDOW)},
        f"{v1}/admin/analytics/listening": {"get": op(
            "Listener-minutes per channel, rendition and hour (admins)", {200: "ListeningSeries"},
            errors=(400, 403, 503), params=[*WINDOW, query("channel", description="only this channel")])},
        f"{v1}/admin/analytics/peaks": {"get": op(
            "Peak concurrent listeners per channel and connections per room, per day (admins)", {200: "Peaks"},
            errors=(400, 403, 503), params=[*WINDOW, query("kind", {"enum": ["listeners", "connections"]},
                                                           "only this kind (default: both)")])},
        f"{v1}/admin/analytics/top-tracks": {"get": op(
            "The most played tracks among those last played in the window (admins)", {200: "TopTracks"},
            errors=(400, 403, 503), params=[*WINDOW, query("channel", description="only this channel"),
                                            query("limit", {"type": "integer", "minimum": 1, "maximum": 100,
                                                            "default": 10})])},
    }


@functools.cache
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = dict(RESPONSE_SCHEMAS)
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "Veza API", "version": "1",
                 "description": "Users, login, tokens, rooms, channels and tracks of one Veza platform. "
                                "Errors are always {\"error\": {\"code\", \"message\"}}."},
        "paths": paths(),
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(document())
