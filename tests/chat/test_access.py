"""access.py and the session's text rules alone: room roles, room-scoped tokens, refusals with
their status and code, and what a message text may hold."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.chat import ISSUER
from veza_chat import protocol as p
from veza_chat.access import authorize, room_role, token_allows_room
from veza_chat.session import check_text
from veza_chat.spec import RoomSpec
from veza_core.auth import AUDIENCE_CHAT, Principal, TokenIssuer, TokenVerifier
from veza_core.keys import KeySet, generate_signing_key
from veza_core.web import HttpError

PRIVATE = RoomSpec.model_validate({"visibility": "private", "members": [{"user": "olga", "role": "owner"}]})
PUBLIC = RoomSpec.model_validate({"members": [{"user": "mia", "role": "moderator"}]})
ISSUING = TokenIssuer(KeySet.from_private_keys([generate_signing_key()]), issuer=ISSUER)
VERIFIER = TokenVerifier(ISSUING.keys, issuer=ISSUER, audience=AUDIENCE_CHAT)


def who(subject: str, *roles: str, **claims: Any) -> Principal:
    return Principal(subject, subject.title(), frozenset(roles), claims)


@pytest.mark.parametrize(("principal", "spec", "role"), [
    (who("anyone"), PUBLIC, "member"),
    (who("mia"), PUBLIC, "moderator"),
    (who("root", "admin"), PRIVATE, "admin"),
    (who("olga"), PRIVATE, "owner"),
    (who("guest", res={"room/team": "member"}), PRIVATE, "member"),
    (who("stranger", res={"room/elsewhere": "owner"}), PRIVATE, None),
    (who("stranger"), PRIVATE, None),
], ids=["public", "spec-moderator", "admin", "spec-owner", "token-grant", "grant-elsewhere", "stranger"])
def test_room_role(principal: Principal, spec: RoomSpec, role: str | None) -> None:
    assert room_role(principal, "team", spec) == role


@pytest.mark.parametrize(("claims", "allowed"), [
    ({}, True), ({"room": "team"}, True), ({"rooms": ["a", "team"]}, True),
    ({"room": "other"}, False), ({"rooms": ["a"]}, False), ({"rooms": 5}, False),
])
def test_token_scoped_to_rooms(claims: dict[str, Any], allowed: bool) -> None:
    assert token_allows_room(who("u", **claims), "team") is allowed


def refusal(token: str | None, spec: RoomSpec = PUBLIC, banned: frozenset[str] = frozenset()) -> tuple[int, str]:
    with pytest.raises(HttpError) as err:
        authorize(token, VERIFIER, "team", spec, banned=banned.__contains__)
    return err.value.status, err.value.code


def token(user: str, **claims: Any) -> str:
    return ISSUING.issue(user, audience=claims.pop("audience", AUDIENCE_CHAT), name=user.title(), **claims)


def test_authorize_answers_a_principal_and_role_or_a_stable_refusal() -> None:
    principal, role = authorize(token("mia"), VERIFIER, "team", PUBLIC, banned=lambda _: False)
    assert (principal.subject, role) == ("mia", "moderator")
    assert refusal(None) == (401, "token_missing")
    assert refusal("garbage") == (401, "token_malformed")
    assert refusal(token("u", audience="veza-api")) == (401, "token_audience")
    assert refusal(token("u", room="other")) == (403, "token_room")
    assert refusal(token("troll"), banned=frozenset({"troll"})) == (403, p.BANNED)
    assert refusal(token("stranger"), PRIVATE) == (403, p.NOT_MEMBER)


@pytest.mark.parametrize(("text", "code"), [
    ("hello @a @b", None),
    ("é" * 50, None),
    ("é" * 51, p.MESSAGE_TOO_LARGE),
    ("Buy SPAM now", p.BLOCKED_WORD),
    ("spammer is a different word", None),
    ("@a @b @c hi", p.TOO_MANY_MENTIONS),
    ("mail me at a@b.c", None),
])
def test_check_text(text: str, code: str | None) -> None:
    spec = RoomSpec.model_validate({"limits": {"maxMessageBytes": 100},
                                    "moderation": {"blockedWords": ["spam"], "maxMentions": 2}})
    if code is None:
        check_text(spec, text)
    else:
        with pytest.raises(p.FrameError) as err:
            check_text(spec, text)
        assert err.value.code == code
