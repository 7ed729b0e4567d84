"""``/v1/responses``: create, retrieve (and replay its stream), cancel, delete, input items.
gateway/responses.py does the work, native or emulated."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from opencone.api.auth import current_org
from opencone.api.json_body import JsonBody
from opencone.api.wire.openai import (
    DeletedResponse,
    ItemList,
    OpenAIRoute,
    ResponseObject,
    answered,
    errors,
    gateway_of,
    json_of,
    own_files,
    sse_or,
)
from opencone.gateway.responses import CreateBody

router = APIRouter(tags=["responses"], route_class=OpenAIRoute)

_SCHEMA = CreateBody.model_json_schema()
_SCHEMA["additionalProperties"] = True
_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": _SCHEMA}}}}
Include = Annotated[list[str] | None, Query(alias="include[]", description="Extra fields, as OpenAI's `include`.")]


@router.post("/v1/responses", openapi_extra=_BODY, response_class=Response,
             responses={**sse_or(ResponseObject, "The Response"), **errors(400, 401, 404, 413, 422, 429, 502, 504)})
async def create_response(request: Request, org: str = Depends(current_org)) -> Response:
    """Create a response: native for upstreams with a Responses API, emulated over chat for the others."""
    return await create(request, org)


async def create(request: Request, org: str) -> Response:
    """The route's work (also answered in front of FastAPI: api/gateway_hot.py)."""
    answer = await gateway_of(request).responses.create(org, await json_of(request), own_files(request))
    return answered(answer.body, answer.stream, answer.dropped)


@router.get("/v1/responses/{response_id}", response_class=Response,
            responses={**sse_or(ResponseObject, "The Response"), **errors(400, 401, 404, 410, 429, 502, 504)})
async def retrieve_response(
    response_id: str, request: Request, org: str = Depends(current_org),
    stream: Annotated[bool, Query(description="Replay the response's events as SSE (live while it runs).")] = False,
    starting_after: Annotated[int | None, Query(ge=-1, description="Replay from the event after this one.")] = None,
    include: Include = None,
) -> Response:
    """A response as it stands, or (`stream=true`) its events from `starting_after` + 1."""
    answer = await gateway_of(request).responses.retrieve(org, response_id, stream, starting_after, include or [])
    return answered(answer.body, answer.stream, answer.dropped)


@router.post("/v1/responses/{response_id}/cancel", response_class=Response,
             responses={200: {"model": ResponseObject, "description": "The Response"},
                        **errors(400, 401, 404, 410, 429, 502, 504)})
async def cancel_response(response_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    """Cancel a background response (one already done comes back as it ended)."""
    answer = await gateway_of(request).responses.cancel(org, response_id)
    return answered(answer.body, answer.stream, answer.dropped)


@router.delete("/v1/responses/{response_id}", response_class=Response,
               responses={200: {"model": DeletedResponse, "description": "Deleted"},
                          **errors(401, 404, 410, 429, 502, 504)})
async def delete_response(response_id: str, request: Request, org: str = Depends(current_org)) -> Response:
    """Delete a response (here, and at its upstream for a native one)."""
    return JsonBody(await gateway_of(request).responses.delete(org, response_id))


@router.get("/v1/responses/{response_id}/input_items", response_class=Response,
            responses={200: {"model": ItemList, "description": "The input items"},
                       **errors(400, 401, 404, 410, 429, 502, 504)})
async def list_input_items(
    response_id: str, request: Request, org: str = Depends(current_org),
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query(description="The item id to list after.")] = None,
    include: Include = None,
) -> Response:
    """The input items of a response (its own, not its chain's)."""
    answer = await gateway_of(request).responses.input_items(org, response_id, limit, order, after, include or [])
    return answered(answer.body, answer.stream, answer.dropped)
