"""The OpenAPI document, made to say what the server really answers.

FastAPI gives every operation with parameters a 422 of its own
``HTTPValidationError`` shape, which no answer of ours has, and no auth.
Here the document is taken as FastAPI builds it from the routes, whose
``responses=errors.problems(...)`` list the error statuses each can give, and
then:

- every error status (4xx, 5xx) is a ``Problem`` as ``application/problem+json``,
  the body api/errors.py sends; but for the model gateway's routes, whose
  errors are OpenAI's ``{"error": {…}}`` as JSON (api/wire/openai.py): left as
  they say;
- FastAPI's own 422s are dropped with their schemas: where a 422 can happen
  the route says so;
- the operations behind an API key (those that can answer 401) get a
  ``security`` requirement: Bearer, and ``?token=`` where the route says so
  (``openapi_extra=KEY_OR_TOKEN``).

tests/test_openapi_fuzz.py holds the server to it: schemathesis checks that
every answer's status, media type and body match this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from opencone.api.errors import PROBLEM_JSON

_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer <key>`."},
    "token": {"type": "apiKey", "in": "query", "name": "token",
              "description": "The same key as `?token=<key>` (streams and CDP, whose clients cannot set headers)."},
}
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")
# ``openapi_extra`` of the routes that take the key as ``?token=`` as well (auth.current_org_or_token)
KEY_OR_TOKEN: dict[str, Any] = {"security": [{"bearer": []}, {"token": []}]}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            app.openapi_schema = truthful(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def truthful(doc: dict[str, Any]) -> dict[str, Any]:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_422:
        schemas.pop(name, None)
    doc["components"]["securitySchemes"] = _SCHEMES
    for item in doc["paths"].values():
        for op in item.values():
            responses = op.setdefault("responses", {})
            for status in list(responses):
                if status[:1] not in ("4", "5"):
                    continue
                if _is_fastapi_422(responses[status]):
                    del responses[status]
                    continue
                if _refs(responses[status], "/OpenAIError"):
                    continue
                responses[status]["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            if "401" in responses:  # behind a key: Bearer, unless the route says (KEY_OR_TOKEN)
                op.setdefault("security", [{"bearer": []}])
    return doc


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    return _refs(response, "/HTTPValidationError")


def _refs(response: dict[str, Any], name: str) -> bool:
    refs = [media.get("schema", {}).get("$ref", "") for media in response.get("content", {}).values()]
    return any(ref.endswith(name) for ref in refs)
