"""Recordings of a computer's screen (core/recording.py): start, stop, the MP4, the timeline.

The MP4 links take ``?token=<key>`` as well as the Bearer header, so a ``<video src>`` (the live
view's replay page) can play and seek them: answers honour ``Range`` (206), as a browser's media
player asks. A recording in progress is served up to its last complete fragment: a playable MP4
of everything so far.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam

from opencone.api.auth import current_org, current_org_or_token
from opencone.api.bounded_file import BoundedFile
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problems
from opencone.api.openapi import KEY_OR_TOKEN
from opencone.api.wire.recordings import RecordingStart, recording_response
from opencone.core.errors import NotFound

router = APIRouter(tags=["recordings"])

MP4 = "video/mp4"
_VIDEO = {200: {"content": {MP4: {}}, "description": "The MP4 (H.264); 206 for a Range"}}
# ids as the server makes them: anything else is a 422 before any lookup
REC_ID = PathParam(pattern=r"^rec_[0-9a-f]{1,64}$", max_length=68, description="A recording id (rec_…)")
COMP_ID = PathParam(max_length=128)


async def _video(request: Request, org: str, rec_id: str | None = None, computer_id: str | None = None) -> Response:
    path, size, rid = await runtime(request).recordings.video(org, rec_id, computer_id)
    headers = {"cache-control": "no-store", "x-recording-id": rid,
               "content-disposition": f'inline; filename="{rid}.mp4"'}
    try:  # opened now: a delete racing this answer unlinks the file, the open descriptor still reads it
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # deleted in between
        raise NotFound(f"no recording {rid!r}") from None
    try:
        return BoundedFile(path, size, media_type=MP4, headers=headers, fd=fd)
    except BaseException:
        os.close(fd)
        raise


@router.post("/computers/{computer_id}/recording/start", responses=problems(401, 404, 409, 413, 422))
async def start_recording(request: Request, body: RecordingStart | None = None, computer_id: str = COMP_ID,
                          org: str = Depends(current_org)) -> dict[str, Any]:
    """Record the computer's screen from now on; 409 if it is being recorded already or the
    organisation's storage is at its cap."""
    keep = body.keep if body is not None else False
    rec = await runtime(request).recordings.start_recording(org, computer_id, keep)
    return recording_response(rec, base_url(request))


@router.post("/computers/{computer_id}/recording/stop", responses=problems(401, 404, 409, 422))
async def stop_recording(request: Request, computer_id: str = COMP_ID,
                         org: str = Depends(current_org)) -> dict[str, Any]:
    """Stop and finish the recording in progress (409 when there is none); the finished recording."""
    rec = await runtime(request).recordings.stop_recording(org, computer_id)
    return recording_response(rec, base_url(request))


@router.get("/computers/{computer_id}/recording", response_class=Response,
            responses={**_VIDEO, **problems(401, 404, 422)}, openapi_extra=KEY_OR_TOKEN)
async def computer_recording(request: Request, computer_id: str = COMP_ID,
                             org: str = Depends(current_org_or_token)) -> Response:
    """The computer's latest recording as MP4: during the recording, everything so far."""
    return await _video(request, org, computer_id=computer_id)


@router.get("/computers/{computer_id}/recording/timeline", responses=problems(401, 404, 422),
            openapi_extra=KEY_OR_TOKEN)
async def computer_recording_timeline(request: Request, computer_id: str = COMP_ID,
                                      org: str = Depends(current_org_or_token)) -> dict[str, Any]:
    """The latest recording and its timeline: each action with its offset into the video."""
    out = await runtime(request).recordings.timeline(org, computer_id=computer_id)
    out["recording"] = recording_response(out["recording"], base_url(request))
    return out


@router.get("/recordings", responses=problems(401, 422), openapi_extra=KEY_OR_TOKEN)
async def list_recordings(request: Request, computer_id: str | None = Query(None, max_length=128),
                          org: str = Depends(current_org_or_token)) -> list[dict[str, Any]]:
    """This organisation's recordings (of one computer with ``?computer_id=``), oldest first."""
    base = base_url(request)
    return [recording_response(r, base) for r in await runtime(request).recordings.list(org, computer_id)]


@router.get("/recordings/{recording_id}", response_class=Response,
            responses={**_VIDEO, **problems(401, 404, 422)}, openapi_extra=KEY_OR_TOKEN)
async def get_recording(request: Request, recording_id: str = REC_ID,
                        org: str = Depends(current_org_or_token)) -> Response:
    """A recording's MP4, by its id: also after its computer ended, if it was kept."""
    return await _video(request, org, rec_id=recording_id)


@router.get("/recordings/{recording_id}/timeline", responses=problems(401, 404, 422), openapi_extra=KEY_OR_TOKEN)
async def recording_timeline(request: Request, recording_id: str = REC_ID,
                             org: str = Depends(current_org_or_token)) -> dict[str, Any]:
    out = await runtime(request).recordings.timeline(org, rec_id=recording_id)
    out["recording"] = recording_response(out["recording"], base_url(request))
    return out


@router.delete("/recordings/{recording_id}", status_code=204, responses=problems(401, 404, 422))
async def delete_recording(request: Request, recording_id: str = REC_ID,
                           org: str = Depends(current_org)) -> Response:
    """Delete a recording (stopping it first if it is in progress) and its files."""
    await runtime(request).recordings.delete(org, recording_id)
    return Response(status_code=204)
