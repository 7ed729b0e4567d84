"""``/mcp`` on the FastAPI app: the SDK's Streamable HTTP app, behind the server's own API keys.

The SDK's app serves both protocol eras on one endpoint (the 2025-11-25 handshake with its
``Mcp-Session-Id``, and the sessionless 2026-07-28). It is added as one more route of the app, so
every other route stays as it was, and its session manager runs inside the app's lifespan (a
mounted app's own lifespan never runs). Without the ``mcp`` extra, ``/mcp`` answers a JSON 501
saying how to install it.

``stateless=True`` (a fleet replica, fleet/replica_mcp.py) serves the handshake era without sessions
too: ``initialize`` is answered with no ``Mcp-Session-Id``, so a client sends none and each request
stands alone, on whichever replica it reaches. The tools keep nothing per session and send the client
no requests or notifications (what a session would carry). One server keeps its sessions: there
a 2025-11-25 client's ``notifications/cancelled`` reaches the session running the call and stops it (a
``wait`` ends at once); stateless, it would reach a request of its own and the call would run on. A
replica loses nothing: its calls run on a node, which that cancel never reached.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opencone.api.errors import problem
from opencone.config import Settings
from opencone.mcp import sdk_available

if TYPE_CHECKING:
    from fastapi import FastAPI

    from opencone.core.runtime import Runtime
    from opencone.mcp.computers import Computers

log = logging.getLogger(__name__)

PATH = "/mcp"
MAX_KEY_CHARS = 512  # longer is no key of ours: refused before any lookup
NOT_INSTALLED = ("MCP is not installed on this server: install the optional extra (pip install 'opencone[mcp]') "
                 "and restart it; the REST API at /computers serves the same computers meanwhile")


def base_url(settings: Settings) -> str:
    return (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")


class KeyVerifier:
    """The SDK's ``TokenVerifier`` over opencone's API keys: the Bearer key's organisation becomes
    the access token's ``client_id``, which the tools read back (a key of another organisation
    never sees this one's computers)."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        if not token or len(token) > MAX_KEY_CHARS:
            return None
        org = await self._runtime().accounts.org_for_key(token)
        return None if org is None else AccessToken(token=token, client_id=org, scopes=[])


def _caller() -> Any:
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.mcpserver.exceptions import ToolError

    token = get_access_token()
    if token is None:  # (the SDK's auth middleware refuses such a request before any tool runs)
        raise ToolError("not authenticated: send 'Authorization: Bearer <API key>'")
    return token


def caller_org() -> str:
    """The calling key's organisation (the verifier put it in the access token)."""
    return _caller().client_id  # type: ignore[no-any-return]


def caller_key() -> str:
    """The calling key itself (a fleet replica's tools call its REST routes with it)."""
    return _caller().token  # type: ignore[no-any-return]


async def _not_installed(request: Request) -> Response:
    return problem(501, NOT_INSTALLED, extra={"extra": "opencone[mcp]"})


class Mounted:
    """What the app's lifespan runs: the SDK's session manager (or nothing, without the SDK)."""

    def __init__(self, server: Any | None) -> None:
        self.server = server

    def running(self) -> AbstractAsyncContextManager[None]:
        if self.server is None:
            return contextlib.nullcontext()
        return self._run()

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield


def install(app: FastAPI, settings: Settings, computers: Callable[[], Computers] | None = None, *,
            stateless: bool = False) -> Mounted:
    """Add ``/mcp`` to ``app``; its tools run over ``computers`` (default: this process's services).
    ``stateless``: no handshake-era sessions either (any request on any process of a fleet)."""
    if not sdk_available():
        app.router.routes.append(Route(PATH, _not_installed, methods=["GET", "POST", "DELETE"]))
        log.info("MCP: the mcp SDK is not installed; %s answers 501", PATH)
        return Mounted(None)
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.transport_security import TransportSecuritySettings

    from opencone.mcp import server as mcp_server
    from opencone.mcp.computers import local
    from opencone.mcp.tools import Backend

    base = base_url(settings)
    backend = Backend(computers=computers or local(lambda: app.state.runtime, caller_org), base_url=lambda: base,
                      groups=frozenset(g for g in settings.mcp_groups.split(",") if g))
    server = mcp_server.build(
        backend, token_verifier=KeyVerifier(lambda: app.state.runtime),
        # static API keys, checked by the verifier; no OAuth metadata is advertised (there is no
        # authorization server to send a client to, and a client that sees one may try OAuth instead
        # of its configured Authorization header). The SDK wants an issuer even so: ourselves.
        auth=AuthSettings(issuer_url=base, resource_server_url=None, validate_token_resource=False))
    # JSON answers instead of an SSE stream per call: the tools send no progress or log messages
    # mid-call, and a call costs ~7 ms less (bench/bench_mcp.py). DNS-rebinding protection off: every
    # request must carry an API key, which a rebound page in a victim's browser cannot send, and the
    # default (localhost Host headers only) would refuse a server reached by its real name with a 421
    asgi = server.streamable_http_app(
        streamable_http_path=PATH, json_response=True, stateless_http=stateless,
        # handshake-era sessions (unless stateless) are held in memory until the client ends them or
        # they idle out: bounded, so a key cannot pile them up (the sessionless era keeps none)
        session_idle_timeout=900, max_sessions=1000,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    # the SDK's app (its auth middleware around its route) answers /mcp
    for route in asgi.routes:
        app.router.routes.append(Route(route.path, asgi))  # type: ignore[attr-defined]
    return Mounted(server)
