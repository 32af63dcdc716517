"""API errors: raised anywhere, answered as {"error": {"code", "message"}} by the middleware."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def parse_uuid(value: str, what: str = "id") -> uuid.UUID:
    """A uuid from a path or query parameter; anything else names nothing that exists."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ApiError(404, "not_found", f"{what} not found") from exc


def forbidden(message: str = "you may not do this") -> ApiError:
    return ApiError(403, "forbidden", message)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body parsed into `model`: 413 when too big, 400 when not JSON, 422 when invalid."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "body_too_large", "the request body is too large") from exc
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from exc
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        raise ApiError(422, "invalid_body", "the body does not match the expected shape",
                       problems=problems[:20]) from exc
