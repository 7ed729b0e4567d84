"""Drives the seed-era Notte client (``notte==1.2.1``) for tests/test_notte_seed.py.

Run with the Python of its own virtual environment (scripts/setup.sh --test makes it): reads
one JSON call per line on stdin, answers one JSON line on stdout (``{"ok": …}`` or
``{"error": …}``), so the test can look at the page between the client's calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from loguru import logger
from notte.sdk.client import NotteClient

logger.remove()  # the client logs every request: keep stdout for answers
client = NotteClient(api_key=os.environ["NOTTE_API_KEY"], server_url=os.environ["NOTTE_SERVER_URL"])


def observation(obs: Any) -> dict[str, Any]:
    space = None
    if obs.has_space():
        space = {"description": obs.space.description,
                 "category": None if obs.space.category is None else obs.space.category.value,
                 "actions": [dataclasses.asdict(x) for x in obs.space.actions("all")],
                 "special": [x.id for x in obs.space.special_actions()]}
    data = None
    if obs.data is not None:
        data = {"markdown": obs.data.markdown,
                "images": None if obs.data.images is None else [dataclasses.asdict(i) for i in obs.data.images]}
    return {"url": obs.metadata.url, "title": obs.metadata.title, "space": space, "data": data,
            "screenshot": None if obs.screenshot is None else obs.screenshot.decode(),
            "session_id": client.session_id}


def call(name: str, args: dict[str, Any]) -> Any:
    if name == "session_id":
        return client.session_id
    result = getattr(client, name)(**args)
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    return observation(result)


for line in sys.stdin:
    request = json.loads(line)
    try:
        answer: dict[str, Any] = {"ok": call(request["call"], request.get("args", {}))}
    except Exception as exc:  # the client's own error, as the test expects to see it
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
