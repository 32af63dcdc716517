"""Every answer the API tests receive is checked against the served OpenAPI document:
the operation exists, the status is documented, and a JSON body matches its schema."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator

from veza_api.openapi import document


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in document()["paths"]:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        found.append((re.compile(f"^{pattern}$"), template))
    # Literal paths first: /auth/magic-link/verify must not be taken for a template.
    return sorted(found, key=lambda item: item[1].count("{"))


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    path = unquote(path.split("?", 1)[0])
    for pattern, template in _templates():
        if pattern.match(path):
            operation = document()["paths"][template].get(method.lower())
            return (template, operation) if operation else None
    return None


def check_response(method: str, path: str, status: int, body: Any) -> None:
    found = operation_for(method, path)
    if found is None:
        # Calls to routes that do not exist (hostile-input tests) must fail as such.
        assert status in (400, 404, 405), f"{method} {path} answered {status} but is not documented"
        return
    template, operation = found
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template}: status {status} is not documented ({body!r:.200})"
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    errors = sorted(Draft202012Validator({**schema, "components": document()["components"]}).iter_errors(body),
                    key=str)
    assert not errors, f"{method} {template} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"
