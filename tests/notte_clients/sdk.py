"""Drives the current Notte client (``notte-sdk``) for tests/test_notte_sdk.py.

Run with the Python of its own virtual environment (scripts/setup.sh --test makes it),
with ``NOTTE_API_URL``, ``NOTTE_API_KEY`` and ``DISABLE_TELEMETRY=true``: reads one JSON
call per line on stdin, answers one JSON line on stdout (``{"ok": …}`` or ``{"error": …}``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from loguru import logger
from notte_sdk import NotteClient
from notte_sdk.endpoints import base

logger.remove()
# the client asks PyPI once for its latest version: not from a test (the test's proxy refuses it anyway)
base.BaseClient.check_and_warn_version_mismatch = lambda self: None  # type: ignore[method-assign]
client = NotteClient()
session: Any = None


def dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    return value


def call(name: str, args: dict[str, Any]) -> Any:
    global session
    match name:
        case "enter":  # `with client.Session(**args) as session:`
            session = client.Session(**args)
            session.__enter__()
            return dump(session.response)
        case "attach":  # `client.Session(session_id=...)`: a session started elsewhere
            session = client.Session(**args)
            return dump(session.response)
        case "exit":
            session.__exit__(None, None, None)
            return dump(session.response)
        case "status":
            return dump(session.status())
        case "observe":
            obs = session.observe(**args)
            return {"url": obs.metadata.url, "title": obs.metadata.title,
                    "screenshot_bytes": len(obs.screenshot.bytes()), "bboxes": len(obs.screenshot.bboxes),
                    "actions": [dump(x) | {"description": x.description} for x in obs.space.interaction_actions],
                    "description": obs.space.description}
        case "execute":
            result = session.execute(**args)
            return {"success": result.success, "message": result.message,
                    "data": None if result.data is None else result.data.markdown}
        case "scrape":
            return session.scrape(**args)
        case "stop":
            session.stop(**args)
            return dump(session.response)
        case "list":
            return dump(list(client.sessions.list(**args)))
        case "cdp_url":
            return session.cdp_url()
    raise ValueError(f"unknown call {name}")


for line in sys.stdin:
    request = json.loads(line)
    try:
        answer: dict[str, Any] = {"ok": call(request["call"], request.get("args", {}))}
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer, default=str), flush=True)
