"""``/computers/{id}/files``: a computer's downloads and workspace (core/computer_files.py).

``GET …/files`` lists, ``GET …/files/{path}`` streams a file's bytes, ``PUT …/files/{path}``
uploads (the body is the file, streamed to disk, at most ``OPENCONE_MAX_UPLOAD_BYTES``;
api/guard.py leaves these bodies to this route), ``DELETE …/files/{path}`` deletes. Every
one takes ``?dir=downloads|workspace`` (a browser's default: downloads; a desktop's:
workspace).
"""

from __future__ import annotations

import mimetypes
import os
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from opencone.api.auth import current_org
from opencone.api.bounded_file import BoundedFile
from opencone.api.deps import runtime
from opencone.api.errors import problems
from opencone.core.computer_files import TooLarge

router = APIRouter(tags=["files"])

UPLOAD_PATH = r"^/computers/[^/]+/files/"  # (api/guard.py: bodies this route reads itself)

_DIR = Query(default=None, description="`downloads` or `workspace`; a browser computer's default is "
                                       "downloads, a desktop's workspace.")
_ERRORS = problems(400, 401, 403, 404, 409, 422)
_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
_ANY_TYPE = {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}  # (guessed from the name)


@router.get("/computers/{computer_id}/files", responses=_ERRORS)
async def list_files(computer_id: str, request: Request, dir: Literal["downloads", "workspace"] | None = _DIR,
                     path: str | None = Query(default=None, max_length=1024,
                                              description="A directory in it to list (its root when absent)."),
                     org: str = Depends(current_org)) -> dict[str, Any]:
    """Every entry under the directory (depth first, at most 5000: then `truncated`): `name`, `path`
    (relative to the dir), `type` (`file`, `directory`, `symlink`, `other`), `size`, `modified`.
    Links are listed, never followed."""
    return await runtime(request).computer_files.list(org, computer_id, dir, path)


@router.get("/computers/{computer_id}/files/{path:path}", response_class=Response,
            responses={200: {"description": "The file's bytes", **_ANY_TYPE},
                       206: {"description": "The part a `Range` header asked for", **_ANY_TYPE},
                       **_ERRORS, **problems(416)})
async def get_file(computer_id: str, path: str, request: Request,
                   dir: Literal["downloads", "workspace"] | None = _DIR,
                   org: str = Depends(current_org)) -> Response:
    """The file's bytes (`content-disposition: attachment`; the type guessed from its name). A
    `Range` header (`bytes=START-END`, several, or a suffix) gets a 206 with those bytes, so a
    large download can be resumed."""
    files = runtime(request).computer_files
    async with files.opened(org, computer_id, dir, path) as (_dir, opened):
        fd = os.dup(opened.fd)  # the answer's own: the block closes the other
    media = mimetypes.guess_type(opened.name)[0] or "application/octet-stream"
    headers = {"content-disposition": _attachment(opened.name),
               "x-content-type-options": "nosniff", "content-security-policy": "sandbox",
               "cache-control": "no-store"}
    try:
        # served from the descriptor opened without following links, never by path again
        return BoundedFile(opened.name, opened.size, media_type=media, headers=headers, fd=fd)
    except BaseException:
        os.close(fd)
        raise


def _attachment(name: str) -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.put("/computers/{computer_id}/files/{path:path}", status_code=201,
            openapi_extra={"requestBody": {"required": True, **_BINARY}},
            responses={**_ERRORS, **problems(413)})
async def put_file(computer_id: str, path: str, request: Request,
                   dir: Literal["downloads", "workspace"] | None = _DIR,
                   org: str = Depends(current_org)) -> JSONResponse:
    """Upload the body as the file `path` (its directories made as needed; a file already there is
    replaced once the whole body has arrived). At most `OPENCONE_MAX_UPLOAD_BYTES`: 413 beyond."""
    files = runtime(request).computer_files
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > files.max_upload_bytes:
        raise TooLarge(f"the upload is {length} bytes; at most {files.max_upload_bytes} are allowed "
                       "(OPENCONE_MAX_UPLOAD_BYTES)")
    written = await files.put(org, computer_id, dir, path, request.stream())
    return JSONResponse(written, status_code=201)


@router.delete("/computers/{computer_id}/files/{path:path}", responses=_ERRORS)
async def delete_file(computer_id: str, path: str, request: Request,
                      dir: Literal["downloads", "workspace"] | None = _DIR,
                      org: str = Depends(current_org)) -> dict[str, Any]:
    """Delete the file (a link itself, never what it points to) or an empty directory."""
    return await runtime(request).computer_files.delete(org, computer_id, dir, path)
