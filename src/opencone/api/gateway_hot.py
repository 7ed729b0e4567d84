"""The model gateway's hot routes, answered in front of FastAPI's routing.

``POST /v1/chat/completions`` (``/chat/completions``) and ``POST /v1/responses`` are
what a client's model loop calls on every step, and what the gateway exists to
pass on cheaply. FastAPI's routing (its scan of every route of the API), dependency
solving and request wrapping cost them about 0.3 ms of server CPU each, a sixth of
all the server does for a passed-on chat call. So, as api/hot_actions.py does for
the computers' actions, they are taken here with a valid key and answered by the
very same route code (api/routes/chat.py, responses.py), errors said the same way;
a request without a key, or with one that is not valid, goes on to FastAPI, which
answers it as always (401 in OpenAI's shape).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from opencone.api.auth import presented_key
from opencone.api.routes.chat import complete
from opencone.api.routes.responses import create
from opencone.api.wire.openai import error_response, gateway_error
from opencone.core.errors import ServiceError
from opencone.gateway.errors import GatewayError

log = logging.getLogger(__name__)
HOT = {"/v1/chat/completions": complete, "/chat/completions": complete}


class GatewayHot:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = HOT.get(path)
        if route is None and path != "/v1/responses":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        key = presented_key(request, allow_query=False)
        org = await request.app.state.runtime.accounts.org_for_key(key) if key else None
        if org is None:
            return await self.app(scope, receive, send)
        try:
            response = await (route(request) if route is not None else create(request, org))
        except GatewayError as exc:
            response = gateway_error(exc)
        except ServiceError as exc:
            response = error_response(exc.status, exc.message)
        except Exception as exc:  # a bug: said in the routes' own shape, as their route class does
            log.exception("unhandled error")
            response = error_response(500, f"internal error: {exc.__class__.__name__}")
        await response(scope, receive, send)
