"""The OpenAPI document is served, describes every route, and its schemas are valid JSON Schema.

Answers are validated against it by every API test (see tests/support/api.py).
"""

from __future__ import annotations

import re

from jsonschema import Draft202012Validator

from tests.support.api import Client, check_response, operation_for
from veza_api.app import create_api_app
from veza_api.openapi import document
from veza_api.settings import ApiSettings


def test_every_route_is_documented() -> None:
    app = create_api_app(ApiSettings(database_url="postgresql://unused/db"))
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"
              and r.resource.canonical.startswith(("/api/", "/.well-known/"))}
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented


def test_schemas_are_valid_json_schema() -> None:
    for name, schema in document()["components"]["schemas"].items():
        assert name and Draft202012Validator.check_schema(schema) is None
    for path, operations in document()["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"] and operation["responses"], (path, method)
            if "{" in path:
                declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
                assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


async def test_the_served_document_is_this_one(client: Client) -> None:
    served = await client.get("/api/v1/openapi.json")
    assert served.status == 200 and served.body == document()
    assert served.body["openapi"] == "3.1.0"


def test_the_checker_catches_wrong_answers() -> None:
    assert operation_for("GET", "/api/v1/rooms/general") is not None
    verify = operation_for("POST", "/api/v1/auth/magic-link/verify")
    assert verify is not None and verify[0] == "/api/v1/auth/magic-link/verify"
    for status, body in ((200, {"rooms": [{"name": "x"}]}), (201, {"rooms": []}), (200, {"error": {}})):
        try:
            check_response("GET", "/api/v1/rooms", status, body)
        except AssertionError:
            continue
        raise AssertionError(f"a wrong answer passed: {status} {body}")
