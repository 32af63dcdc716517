"""Shorthands for the common error answers, all `veza_core.web.HttpError` (the
shared middleware renders them as {"error": {"code", "message"}}), and the
request-body parser that answers 413/400/422.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from veza_core.web import HttpError

M = TypeVar("M", bound=BaseModel)


def not_found(what: str = "resource") -> HttpError:
    return HttpError(404, "not_found", f"{what} not found")


def parse_uuid(value: str, what: str = "id") -> uuid.UUID:
    """A uuid from a path or query parameter; anything else names nothing that exists."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise not_found(what) from exc


def forbidden(message: str = "you may not do this") -> HttpError:
    return HttpError(403, "forbidden", message)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body parsed into `model`: 413 when too big, 400 when not JSON, 422 when invalid."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise HttpError(413, "body_too_large", "the request body is too large") from exc
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise HttpError(400, "invalid_json", "the body is not valid JSON") from exc
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        raise HttpError(422, "invalid_body", "the body does not match the expected shape",
                        problems=problems[:20]) from exc
