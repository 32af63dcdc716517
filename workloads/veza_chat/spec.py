"""The ChatRoom spec the operator passes in VEZA_RESOURCE_SPEC (camelCase as in the CRD)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Limits(_Model):
    max_members: int = Field(10000, alias="maxMembers", ge=1)
    max_message_bytes: int = Field(4096, alias="maxMessageBytes", ge=1)
    messages_per_minute: float = Field(60, alias="messagesPerMinute", gt=0)


class Retention(_Model):
    days: float | None = Field(None, gt=0)
    max_messages: int | None = Field(None, alias="maxMessages", ge=1)


class Member(_Model):
    user: str
    role: Literal["owner", "moderator", "member"] = "member"


class Moderation(_Model):
    slow_mode_seconds: float = Field(0, alias="slowModeSeconds", ge=0)
    blocked_words: list[str] = Field(default_factory=list, alias="blockedWords")
    max_mentions: int | None = Field(None, alias="maxMentions", ge=0)


class RoomSpec(_Model):
    title: str | None = None
    limits: Limits = Field(default_factory=Limits)
    retention: Retention = Field(default_factory=Retention)
    visibility: Literal["public", "private"] = "public"
    members: list[Member] = Field(default_factory=list)
    moderation: Moderation = Field(default_factory=Moderation)

    def member_role(self, user: str) -> str | None:
        for m in self.members:
            if m.user == user:
                return m.role
        return None
