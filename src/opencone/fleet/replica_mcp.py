"""``/mcp`` on a fleet replica: the same tools (mcp/tools.py), over this replica's own REST routes.

A replica holds no computer, so the tools' ``Computers`` (mcp/computers.py) is here a client of the
replica app itself, in-process (``httpx.ASGITransport``: no socket, no second server), that sends each
call with the caller's own key: a create is placed and recorded as a REST create is, every other call
goes to the computer's node through the same routing, tenancy and error answers as REST, and another
organisation's computer is a 404 the tool reports. Actions cross in the canonical model
(``POST /computers/{id}/perform``, api/routes/perform.py, answered by the node).

The 2025-11-25 handshake era is served statelessly here (mcp/mount.py's ``stateless``): no
``Mcp-Session-Id`` is issued, so a client that initialised through one replica calls tools through
any other, and a load balancer needs no sticky route for ``/mcp``. The tools hold nothing per session,
so a replica has no reason to. The SDK's session manager (which then only runs each request's
transport) runs in the replica app's lifespan (wrapped here, so the replica's own lifespan is unchanged).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import FastAPI

from opencone.api.wire.computers import ComputerCreate
from opencone.config import Settings
from opencone.core import actions as a
from opencone.core.errors import Conflict, InvalidInput, LimitReached, NotFound, ServiceError
from opencone.drivers.base import Display
from opencone.mcp import mount
from opencone.mcp.computers import Computers, Done, View

_ERRORS: dict[int, type[ServiceError]] = {404: NotFound, 409: Conflict, 422: InvalidInput, 400: InvalidInput,
                                          429: LimitReached}


COMPUTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # what the replica's routes take (fleet/replica.py)


class Unavailable(ServiceError):
    status = 503


def _failure(resp: httpx.Response) -> ServiceError:
    """A REST problem answer as the service error the tools turn into a tool error (its detail said)."""
    try:
        body = resp.json()
        detail = body.get("detail") or body.get("error_message") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = f"the server answered {resp.status_code}"
    return _ERRORS.get(resp.status_code, Unavailable)(detail)


class RestComputers:
    """The caller's computers through the replica's REST routes (``client`` speaks to the app in-process)."""

    def __init__(self, client: httpx.AsyncClient, key: str, max_side: int) -> None:
        self.http, self.headers, self.max_side = client, {"authorization": f"Bearer {key}"}, max_side

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.http.request(method, path, json=body, headers=self.headers)
        if resp.status_code >= 400:
            raise _failure(resp)
        return resp.json() if resp.content else None

    async def create(self, body: ComputerCreate) -> View:
        sent = body.model_dump(mode="json", exclude_defaults=True)
        return View.from_rest(await self._call("POST", "/computers", sent))

    async def get(self, computer_id: str) -> View:
        return View.from_rest(await self._call("GET", f"/computers/{_seg(computer_id)}"))

    async def list(self) -> list[View]:
        return [View.from_rest(c) for c in await self._call("GET", "/computers")]

    async def delete(self, computer_id: str) -> None:
        await self._call("DELETE", f"/computers/{_seg(computer_id)}")

    async def environments(self) -> list[dict[str, Any]]:
        try:
            envs = await self._call("GET", "/environments")
        except NotFound:
            return []  # a replica that serves no saved environments
        return [{"environment_id": e.get("id"), "kind": e.get("kind"), "status": e.get("status"),
                 "saved_at": e.get("saved_at"), "size_bytes": e.get("size_bytes"), "context_id": e.get("context_id")}
                for e in envs]

    async def display(self, computer_id: str) -> Display:
        view = await self.get(computer_id)
        if view.status == "terminated":
            raise Conflict(f"computer {computer_id} is terminated ({view.termination_reason}); create a new one")
        return view.display

    async def perform(self, computer_id: str, actions: list[a.Action], tab_id: str | None = None) -> Done:
        body = {"actions": [act.model_dump(mode="json") for act in actions], "tab_id": tab_id}
        return Done.from_wire(await self._call("POST", f"/computers/{_seg(computer_id)}/perform", body))


def _seg(computer_id: str) -> str:
    """An id as one path segment: the tools' ids are hostile input, and one that is no computer id of
    ours (a ``/``, a ``..``) is a 404 before any request, never a path that leads elsewhere."""
    if not COMPUTER_ID.match(computer_id):
        raise NotFound(f"no computer {computer_id!r}")
    return computer_id


def install(app: FastAPI, settings: Settings) -> None:
    """``/mcp`` on the replica ``app``, its session manager run inside the app's lifespan."""
    base = mount.base_url(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url=base,
                               timeout=httpx.Timeout(300, connect=10))

    def computers() -> Computers:
        return RestComputers(client, mount.caller_key(), settings.mcp_screenshot_max_side)

    # stateless: a handshake-era client may reach another replica with its next request
    mounted = mount.install(app, settings, computers=computers, stateless=True)
    inner: Callable[[Any], Any] = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state, mounted.running():
            try:
                yield state
            finally:
                await client.aclose()

    app.router.lifespan_context = lifespan
