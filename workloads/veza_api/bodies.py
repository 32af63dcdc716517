"""Request bodies: the pydantic models the handlers parse with and the OpenAPI
document publishes (so the two cannot drift). Kept apart from the route modules
so that the document and every route can import them without importing routes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from veza_core.specs import ChatRoomWorkerSpec

from .services.roles import PLATFORM_ROLES

# Deliberately loose: the address is proven by use (magic links), not by its shape.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"


class Registration(BaseModel):
    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=10, max_length=1024)
    display_name: str = Field(min_length=1, max_length=100)


class Credentials(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(max_length=512)


class LinkRequest(BaseModel):
    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)


class LinkToken(BaseModel):
    token: str = Field(max_length=256)
    # Required by the link mailed at registration (it confirms the address of that password's account).
    password: str | None = Field(None, max_length=1024)


class ServiceTokenRequest(BaseModel):
    audience: str


class ProfileUpdate(BaseModel):
    display_name: str = Field(min_length=1, max_length=100)


class UserUpdate(BaseModel):
    roles: list[str] | None = Field(None, max_length=len(PLATFORM_ROLES))
    disabled: bool | None = None


class Member(BaseModel):
    user: str
    role: str


class RenditionName(BaseModel):
    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9-]*$")
    codec: Literal["opus", "mp3", "aac"]


class Declaration(BaseModel):
    """What the operator knows of a ChatRoom / StreamChannel."""

    title: str = Field(min_length=1, max_length=200)
    visibility: Literal["public", "private"] = "public"
    # When given, replaces the resource's roles (the CR's spec.members is the source of truth).
    members: list[Member] | None = Field(None, max_length=10_000)
    # Rooms only: the StreamChannel it listens along with (spec.channelRef); null removes the binding.
    channel: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    # Channels only: what its players may ask for (spec.renditions); absent or null: unknown.
    renditions: list[RenditionName] | None = Field(None, max_length=16)
    # Rooms only: the worker spec a pool worker serves the room with, the object a dedicated worker gets in
    # VEZA_RESOURCE_SPEC (camelCase), stored as sent; absent or null: the stored one stays.
    spec: dict[str, Any] | None = Field(None, description="Rooms only: the ChatRoom's worker spec (camelCase)")
    # Rooms only: who serves the room, the chat pool or its own workers; absent or null: unchanged.
    placement: Literal["pooled", "dedicated"] | None = None

    @field_validator("spec")
    @classmethod
    def _a_worker_spec(cls, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a worker would refuse at start is refused here, so a pool worker never loads a room it cannot run."""
        if spec is not None:
            try:
                ChatRoomWorkerSpec.model_validate(spec)
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"]) or "spec"
                raise ValueError(f"not a ChatRoom worker spec: {where}: {first['msg']}") from None
        return spec


class RoleGrant(BaseModel):
    role: str


class Action(BaseModel):
    action: Literal["ban", "unban", "mute", "unmute"]
    user_id: str
    reason: str = Field("", max_length=500)
    duration_seconds: int | None = Field(None, ge=1, le=366 * 24 * 3600)
