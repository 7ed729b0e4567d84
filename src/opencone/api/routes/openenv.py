"""The OpenEnv protocol under ``/openenv``: ``POST /reset``, ``POST /step``, ``GET /state``,
``/schema``, ``/metadata``, ``/health``, and the WebSocket ``/ws`` its clients use
(``GenericEnvClient(base_url="http://…/openenv")``). Episodes: api/openenv_sessions.py.

Every route takes a key (here the health and schema too): a Bearer header, ``?token=``, or HTTP
Basic with the key as the password: OpenEnv's client sends no headers of its own, but its
WebSocket library turns the user info of the URL (``http://opencone:<key>@host/openenv``) into
a Basic header. A WebSocket refused for its key
gets a 401 before the handshake; after it, every failure is an ``{"type": "error"}`` message
with OpenEnv's codes, and the connection stays open.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from opencone import __version__
from opencone.api.auth import Unauthorized, presented_key
from opencone.api.errors import problem, problems
from opencone.api.json_body import JsonBody
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.api.openenv_sessions import OpenEnvSessions, ResetParams, new_ws_episode
from opencone.api.wire.step import StepResult, ToolAction
from opencone.core.errors import ServiceError

log = logging.getLogger(__name__)
PREFIX = "/openenv"
router = APIRouter(prefix=PREFIX, tags=["openenv"])
MAX_WS_MESSAGE = 1024 * 1024


def _key(conn: HTTPConnection) -> str | None:
    key = presented_key(conn, allow_query=True)
    if key is not None:
        return key
    scheme, _, blob = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(blob.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None


async def _org(conn: HTTPConnection) -> str | None:
    key = _key(conn)
    return None if key is None else await conn.app.state.runtime.accounts.org_for_key(key)  # type: ignore[no-any-return]


async def openenv_org(conn: HTTPConnection) -> str:
    if _key(conn) is None:
        raise Unauthorized("missing API key; send 'Authorization: Bearer <key>', ?token=<key>, or Basic auth with "
                           "the key as password (http://opencone:<key>@host/openenv)")
    org = await _org(conn)
    if org is None:
        raise Unauthorized("invalid or revoked API key")
    return org


def sessions(conn: HTTPConnection) -> OpenEnvSessions:
    state = conn.app.state
    if getattr(state, "openenv", None) is None:
        state.openenv = OpenEnvSessions(state.runtime)
    return state.openenv  # type: ignore[no-any-return]


class StepParams(BaseModel):
    """OpenEnv's ``StepRequest``, and the episode it is for."""

    model_config = ConfigDict(extra="forbid")
    action: dict[str, Any] = Field(description="The shared action schema, {'action_str': <BrowserGym>} or an "
                                               "OSWorld computer_13 dict.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    request_id: str | None = Field(default=None, max_length=255)
    episode_id: str | None = Field(default=None, max_length=255, description="From the observation /reset gave.")


class EpisodeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episode_id: str = Field(max_length=255)


class OpenEnvResult(BaseModel):
    observation: dict[str, Any]
    reward: float | None = None
    done: bool = False


_AUTH = problems(401, 404, 413, 422)


@router.post("/reset", responses={200: {"model": OpenEnvResult}, **problems(401, 404, 409, 413, 422, 429, 503)},
             openapi_extra=KEY_OR_TOKEN)
async def reset(request: Request, body: ResetParams | None = None, org: str = Depends(openenv_org)) -> JsonBody:
    """A new episode (or `episode_id`'s again) on a fresh computer: from `environment_id`, at `start_url`;
    the observation carries `episode_id` for `/step` and `/state`."""
    return JsonBody(await sessions(request).http_reset(org, body or ResetParams()))


@router.post("/step", responses={200: {"model": OpenEnvResult}, **problems(401, 404, 409, 413, 422)},
             openapi_extra=KEY_OR_TOKEN)
async def step(request: Request, body: StepParams, org: str = Depends(openenv_org)) -> JsonBody:
    """One action of the episode `episode_id`, and the observation after it, its reward and `done`."""
    s = sessions(request)
    return JsonBody(await s.step(s.get(org, body.episode_id), body.action, body.timeout_s))


@router.get("/state", responses=problems(401, 404, 422), openapi_extra=KEY_OR_TOKEN)
async def state(request: Request, episode_id: str | None = Query(default=None, max_length=255),
                org: str = Depends(openenv_org)) -> dict[str, Any]:
    """OpenEnv's `State` of the episode: `episode_id`, `step_count`; ours: `computer_id`, `done`."""
    return sessions(request).get(org, episode_id).state()


@router.post("/close", status_code=204, responses=_AUTH, openapi_extra=KEY_OR_TOKEN)
async def close(request: Request, body: EpisodeRef, org: str = Depends(openenv_org)) -> None:
    """Ours: end an HTTP episode and its computer now (else its computer's lifetimes end it)."""
    await sessions(request).http_close(org, body.episode_id)


_OBS_SCHEMA = StepResult.model_json_schema()


@router.get("/schema", responses=problems(401), openapi_extra=KEY_OR_TOKEN)
async def schema(org: str = Depends(openenv_org)) -> dict[str, Any]:
    """OpenEnv's combined schemas: the action (the shared schema), the observation, the state."""
    return {"action": TypeAdapter(ToolAction).json_schema(), "observation": _OBS_SCHEMA,
            "state": {"type": "object", "properties": {"episode_id": {"type": "string"},
                                                       "step_count": {"type": "integer"},
                                                       "computer_id": {"type": "string"},
                                                       "done": {"type": "boolean"}}}}


@router.get("/metadata", responses=problems(401), openapi_extra=KEY_OR_TOKEN)
async def metadata(org: str = Depends(openenv_org)) -> dict[str, Any]:
    return {"name": "opencone", "version": __version__,
            "description": "Self-hosted computers (Chromium browsers, X11 desktops) as OpenEnv environments: "
                           "one computer per episode; actions in the shared schema, BrowserGym or OSWorld form."}


@router.get("/health", responses=problems(401), openapi_extra=KEY_OR_TOKEN)
async def health(org: str = Depends(openenv_org)) -> dict[str, str]:
    return {"status": "healthy"}


# -- WebSocket ----------------------------------------------------------------------------------
def _error(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "data": {"message": message, "code": code, **extra}}


async def _deny(ws: WebSocket, status: int, detail: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(problem(status, detail))
    else:
        await ws.close(1008, detail[:120])


@router.websocket("/ws")
async def socket(websocket: WebSocket) -> None:
    org = await _org(websocket)
    if org is None:
        await _deny(websocket, 401, "missing or invalid API key; send 'Authorization: Bearer <key>', ?token=<key>, "
                                    "or Basic auth with the key as password (ws://opencone:<key>@host/openenv/ws)")
        return
    try:
        await websocket.accept()
    except Exception:
        return
    s = sessions(websocket)
    ep = new_ws_episode(org)
    try:
        while True:
            try:
                raw = await websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                return
            reply = await _answer(s, ep, raw)
            if reply is None:
                return
            await websocket.send_text(json.dumps(reply))
    except WebSocketDisconnect:
        return
    finally:
        await s.release(ep)  # the connection was the episode: its computer ends with it


async def _answer(s: OpenEnvSessions, ep: Any, raw: str) -> dict[str, Any] | None:
    """One message's reply (None: the client said close)."""
    if len(raw) > MAX_WS_MESSAGE:
        return _error(f"message over {MAX_WS_MESSAGE} bytes", "VALIDATION_ERROR")
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        return _error(f"Invalid JSON: {exc}", "INVALID_JSON")
    if not isinstance(msg, dict):
        return _error("a message is a JSON object {type, data}", "INVALID_JSON")
    kind, data = msg.get("type"), msg.get("data", {})
    try:
        match kind:
            case "reset":
                params = ResetParams.model_validate(data or {})
                ep.id = params.episode_id or ep.id  # the socket's own episode, named as the client likes
                return {"type": "observation", "data": await s.reset(ep, params)}
            case "step":
                if not isinstance(data, dict):
                    return _error("step data is the action, a JSON object", "VALIDATION_ERROR")
                return {"type": "observation", "data": await s.step(ep, data)}
            case "state":
                return {"type": "state", "data": ep.state()}
            case "close":
                return None
        return _error(f"Unknown message type: {kind!r}; known: reset, step, state, close", "UNKNOWN_TYPE")
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]
        return _error("Invalid message: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors),
                      "VALIDATION_ERROR", errors=errors)
    except ServiceError as exc:
        code = "CAPACITY_REACHED" if exc.status in (429, 503) else (
            "VALIDATION_ERROR" if exc.status in (400, 422) else "EXECUTION_ERROR")
        return _error(exc.message, code, status=exc.status)
    except Exception as exc:  # a bug must not end the socket without a word
        log.exception("openenv %s failed", kind)
        return _error(f"{kind} failed: {exc}", "EXECUTION_ERROR")
