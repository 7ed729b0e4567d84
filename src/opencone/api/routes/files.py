"""Capability URLs: the token in the path is the credential."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.core.errors import NotFound

router = APIRouter(tags=["files"])

# what FileStore.put hands out (url-safe base64, a known extension): anything else is no file of ours,
# and never reaches the file system (a NUL in a path makes os.stat raise)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}\.(?:jpg|png|bin)")


_JPEG = {"description": "The screenshot", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}


@router.get("/files/{token}", response_class=Response, responses={200: _JPEG, **problems(404)})
async def get_file(token: str, request: Request) -> Response:
    blob = runtime(request).files.open(token) if _TOKEN.fullmatch(token) else None
    if blob is None:
        raise NotFound("unknown or expired file link; take a new screenshot")
    headers = {"cache-control": "private, max-age=3600"}
    if blob.data is not None:  # just taken: its file is still being written
        return Response(blob.data, media_type=blob.media_type, headers=headers)
    assert blob.path is not None
    return FileResponse(blob.path, media_type=blob.media_type, headers=headers)
