"""``POST /v1/chat/completions`` (and ``/chat/completions``): gateway/chat.py does the work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from opencone.api.auth import current_org
from opencone.api.wire.openai import (
    ChatCompletion,
    OpenAIRoute,
    answered,
    errors,
    gateway_of,
    json_of,
    own_files,
    sse_or,
)
from opencone.gateway import chat
from opencone.gateway.errors import model_error
from opencone.gateway.images import inline_chat_messages
from opencone.gateway.registry import NoModelConfigured, UnknownModel

router = APIRouter(tags=["chat"], route_class=OpenAIRoute)

_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["messages"], "additionalProperties": True,
    "properties": {
        "model": {"type": "string", "description": "A model id of `GET /v1/models`; the default if omitted."},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
    }}}}}}
_RESPONSES = {**sse_or(ChatCompletion, "The upstream's chat.completion"),
              **errors(400, 401, 404, 413, 422, 429, 502, 504)}


async def complete(request: Request) -> Response:
    """The route's work (also answered in front of FastAPI: api/gateway_hot.py)."""
    body = chat.validate(await json_of(request))
    gateway = gateway_of(request)
    try:
        entry = gateway.models.resolve(body.get("model"))
    except (NoModelConfigured, UnknownModel) as exc:
        raise model_error(exc) from None
    body = {**body, "messages": await inline_chat_messages(body["messages"], own_files(request))}
    answer = await gateway.chat.answer(entry, body)
    return answered(answer.body, answer.stream, answer.dropped)


@router.post("/v1/chat/completions", openapi_extra=_BODY, response_class=Response, responses=_RESPONSES)
async def chat_completions(request: Request, _org: str = Depends(current_org)) -> Response:
    """Chat Completions: passed on to OpenAI-compatible upstreams, translated for Anthropic models."""
    return await complete(request)


@router.post("/chat/completions", openapi_extra=_BODY, response_class=Response, responses=_RESPONSES)
async def chat_completions_unversioned(request: Request, _org: str = Depends(current_org)) -> Response:
    """The same as `POST /v1/chat/completions`."""
    return await complete(request)
