"""``GET /v1/models`` (and ``/models``), ``GET /v1/models/{id}``: the models this server can call
(gateway/listing.py says how families are listed)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from opencone.api.auth import current_org
from opencone.api.json_body import JsonBody
from opencone.api.wire.openai import ModelList, ModelObject, OpenAIRoute, errors, gateway_of
from opencone.gateway import listing
from opencone.gateway.errors import model_error
from opencone.gateway.registry import NoModelConfigured, UnknownModel

router = APIRouter(tags=["models"], route_class=OpenAIRoute)


_LIST = {200: {"model": ModelList, "description": "The models"}, **errors(401)}
_ONE = {200: {"model": ModelObject, "description": "The model"}, **errors(401, 404)}


@router.get("/v1/models", response_class=Response, responses=_LIST)
@router.get("/models", response_class=Response, responses=_LIST)
async def list_models(request: Request, _org: str = Depends(current_org)) -> Response:
    """Every model of the registry: models-file entries, and each configured family as its pattern."""
    gateway = gateway_of(request)
    return JsonBody({"object": "list", "data": listing.models(gateway.models, gateway.started_at)})


@router.get("/v1/models/{model_id:path}", response_class=Response, responses=_ONE)
@router.get("/models/{model_id:path}", response_class=Response, responses=_ONE)
async def get_model(model_id: str, request: Request, _org: str = Depends(current_org)) -> Response:
    """One model: a file entry, a family (`openai/*`), or an id a family routes (`openai/gpt-4o`)."""
    gateway = gateway_of(request)
    try:
        return JsonBody(listing.model(gateway.models, model_id, gateway.started_at))
    except (NoModelConfigured, UnknownModel) as exc:
        err = model_error(exc)
        err.status = 404  # nothing configured: no model by that id either
        raise err from None
