"""The StreamChannel spec as the worker reads it (camelCase as in the CRD; unknown fields ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Playlist(_Spec):
    tracks: list[str] = Field(default_factory=list)
    shuffle: bool = False


class Relay(_Spec):
    url: str = ""
    allowed_hosts: list[str] = Field(default_factory=list, alias="allowedHosts")


class Fallback(_Spec):
    playlist: Playlist = Field(default_factory=Playlist)


class Source(_Spec):
    type: Literal["live", "playlist", "relay"] = "playlist"
    playlist: Playlist = Field(default_factory=Playlist)
    relay: Relay = Field(default_factory=Relay)
    fallback: Fallback = Field(default_factory=Fallback)


class Rendition(_Spec):
    name: str
    codec: Literal["opus", "mp3", "aac"]
    bitrate_kbps: int = Field(128, alias="bitrateKbps", ge=8, le=512)

    @field_validator("name")
    @classmethod
    def _url_safe(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value) or value in ("hls", "source", "now-playing",
                                                                                       "tracks"):
            raise ValueError(f"rendition name {value!r} must be [A-Za-z0-9_-]+ and not a reserved path")
        return value


class Hls(_Spec):
    enabled: bool = True
    target_duration_seconds: float = Field(2.0, alias="targetDurationSeconds", gt=0, le=30)
    part_duration_seconds: float | None = Field(None, alias="partDurationSeconds", gt=0)  # LL-HLS when set
    archive: bool = True  # every segment stored in S3 by the replica that encodes


class Delivery(_Spec):
    progressive: bool = True
    hls: Hls = Field(default_factory=lambda: Hls.model_validate({}))


class Limits(_Spec):
    max_listeners: int | None = Field(None, alias="maxListeners", ge=0)


class Recording(_Spec):
    enabled: bool = False


def _default_renditions() -> list[Rendition]:
    return [Rendition(name="mp3-128", codec="mp3", bitrateKbps=128)]


class ChannelSpec(_Spec):
    title: str | None = None
    source: Source = Field(default_factory=Source)
    renditions: list[Rendition] = Field(default_factory=_default_renditions, min_length=1)
    delivery: Delivery = Field(default_factory=Delivery)
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    recording: Recording = Field(default_factory=Recording)
    visibility: Literal["public", "private"] = "public"

    def rendition(self, name: str) -> Rendition | None:
        return next((r for r in self.renditions if r.name == name), None)
