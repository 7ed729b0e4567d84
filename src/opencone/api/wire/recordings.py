"""Recordings on the wire: the recording object with its links."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool


class RecordingStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: StrictBool = False  # keep it after the computer ends (until DELETE /recordings/{id})


def recording_response(rec: dict[str, Any], base: str) -> dict[str, Any]:
    """The services' recording dict plus where to fetch it (``?token=<key>`` works on both links, for a
    ``<video>``)."""
    root = f"{base}/recordings/{rec['id']}"
    return {"object": "recording", **rec, "video_url": root, "timeline_url": f"{root}/timeline",
            "replay_url": f"{base}/live/replay#{rec['id']}"}
