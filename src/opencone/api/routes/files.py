"""Capability URLs: the token in the path is the credential."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from opencone.api.deps import runtime
from opencone.core.errors import NotFound

router = APIRouter(tags=["files"])


@router.get("/files/{token}")
async def get_file(token: str, request: Request) -> FileResponse:
    found = runtime(request).files.open(token)
    if found is None:
        raise NotFound("unknown or expired file link; take a new screenshot")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers={"cache-control": "private, max-age=3600"})
