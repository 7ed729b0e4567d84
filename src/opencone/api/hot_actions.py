"""The action endpoints agents call most, answered in front of FastAPI's routing.

FastAPI's routing, dependency solving and request wrapping cost about 0.4 ms of
server CPU per request here, a third of all the server does for a desktop click
(measured A/B: 0.73 against 1.15 ms of CPU, 2.34 against 2.70 ms per SDK click).
So ``POST /computers/{id}/<action>`` for the routes in ``routes/actions.HOT`` is
taken here: the same body models, the same canonical actions, the same service
call and response as those routes. Whatever this does not take goes on to
FastAPI untouched, body included, and is answered there as always: another path,
no key or an unknown one (401), a body that is not JSON or that the model rejects
(422), a body larger than a click's.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from opencone.api.auth import presented_key
from opencone.api.errors import service_problem
from opencone.api.guard import read_body, replay
from opencone.api.routes.actions import HOT, run_hot
from opencone.core.errors import ServiceError

_PATH = re.compile(r"^/computers/([^/]+)/([a-z-]+)$")
_MAX_BODY = 64 * 1024  # larger bodies (a long text to type) take the usual way


class HotActions:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        route = HOT.get(match.group(2)) if match else None
        if route is None or not _small_json(scope):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        assert body is not None  # (no limit given; api/guard.py has bounded it)
        again = replay(body, receive)
        request = Request(scope, again)
        key = presented_key(request, allow_query=False)
        org = await request.app.state.runtime.accounts.org_for_key(key) if key else None
        if org is None:
            return await self.app(scope, again, send)
        try:
            model: Any = route.body.model_validate_json(body) if body.strip() or not route.optional else route.body()
        except ValidationError:
            return await self.app(scope, again, send)
        assert match is not None
        try:
            response = await run_hot(request, org, match.group(1), match.group(2), model)
        except ServiceError as exc:  # as errors.install answers it for the routes
            response = service_problem(exc)
        await response(scope, again, send)


def _small_json(scope: Scope) -> bool:
    """A body the SDK sends: JSON (or no content type), its length given and small."""
    length = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"content-type":
            content_type = value
    if content_type is not None and not content_type.split(b";")[0].strip().endswith(b"json"):
        return False
    return length is not None and length.isdigit() and int(length) <= _MAX_BODY
