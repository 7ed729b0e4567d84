"""The CDP endpoint: ``/computers/{id}/ws`` and ``/computers/{id}/cdp``.

Both are the same WebSocket proxy to the computer's browser (Puppeteer's
``browserWSEndpoint`` uses ``/ws``; Playwright's ``connect_over_cdp`` uses the
http URL of ``/cdp`` and first fetches ``/cdp/json/version/`` with the same
query string and headers). The key comes as a Bearer header or ``?token=``.

A refused WebSocket gets an HTTP answer before the handshake (401 bad key,
404 unknown computer or another organisation's, 409 ended), as JSON. A
plain GET (no Upgrade) answers 400, so the SDK's ``retrieve_ws()`` raises
``BadRequestError`` with a message that says what to do instead.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from opencone.api.auth import current_org_or_token, org_for, presented_key
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problem, problems
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.core.cdp_proxy import CdpSession, endpoint
from opencone.core.errors import ServiceError

log = logging.getLogger(__name__)
router = APIRouter(tags=["cdp"])

_PLAIN_GET = ("this is a WebSocket endpoint (a CDP proxy to the computer's browser); connect with a CDP client, "
              "e.g. Playwright chromium.connect_over_cdp('{base}/computers/{id}/cdp?token=<key>') or Puppeteer "
              "connect({{browserWSEndpoint: 'ws://…/computers/{id}/ws?token=<key>'}})")


class _Client:
    """Starlette's WebSocket as the proxy's ClientSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            msg = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if msg["type"] == "websocket.disconnect":
            return None
        text = msg.get("text")
        return text if text is not None else msg.get("bytes")

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._ws.send_text(data)
        else:
            await self._ws.send_bytes(data)

    async def close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code, reason)


async def _deny(ws: WebSocket, status: int, detail: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(problem(status, detail))
    else:  # without the denial extension the server answers 403
        await ws.close(1008, detail[:120])


@router.websocket("/computers/{computer_id}/ws")
@router.websocket("/computers/{computer_id}/cdp")
async def cdp_socket(websocket: WebSocket, computer_id: str) -> None:
    rt = websocket.app.state.runtime
    org = await org_for(websocket, allow_query=True)
    if org is None:
        missing = presented_key(websocket, allow_query=True) is None
        await _deny(websocket, 401, "missing API key; send 'Authorization: Bearer <key>' or ?token=<key>"
                    if missing else "invalid or revoked API key")
        return
    try:
        comp = await rt.computers.require_live(org, computer_id)  # another org's computer: 404
        session = await CdpSession.open(rt.computers, comp)
    except ServiceError as exc:
        await _deny(websocket, exc.status, exc.message)
        return
    try:
        await websocket.accept()
    except Exception:  # the client left during the handshake
        await session.close()
        return
    await session.run(_Client(websocket))


@router.get("/computers/{computer_id}/ws", status_code=400, responses=problems(400, 401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
@router.get("/computers/{computer_id}/cdp", status_code=400, responses=problems(400, 401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
async def not_a_websocket(computer_id: str, request: Request,
                          org: str = Depends(current_org_or_token)) -> JSONResponse:
    await runtime(request).computers.require_live(org, computer_id)
    return problem(400, _PLAIN_GET.format(base=base_url(request), id=computer_id))


@router.get("/computers/{computer_id}/cdp/json/version", responses=problems(401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
@router.get("/computers/{computer_id}/cdp/json/version/", responses=problems(401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
@router.get("/computers/{computer_id}/ws/json/version", responses=problems(401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
@router.get("/computers/{computer_id}/ws/json/version/", responses=problems(401, 404, 409),
            openapi_extra=KEY_OR_TOKEN)
async def json_version(computer_id: str, request: Request,
                       org: str = Depends(current_org_or_token)) -> dict[str, Any]:
    """DevTools' /json/version, pointing at this proxy (what ``connect_over_cdp`` fetches first)."""
    comp = await runtime(request).computers.require_live(org, computer_id)
    ep = await endpoint(comp)
    root = base_url(request)
    ws_root = "ws" + root[len("http"):] if root.startswith("http") else root
    url = f"{ws_root}/computers/{computer_id}/{'ws' if '/ws/' in request.url.path else 'cdp'}"
    token = request.query_params.get("token")
    if token:  # given in the URL: the client will not add it by itself; a header is sent again
        url += f"?token={quote(token, safe='')}"
    return {"Browser": ep.product, "Protocol-Version": "1.3", "webSocketDebuggerUrl": url}
