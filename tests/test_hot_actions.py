"""The hot action routes answered in front of FastAPI (api/hot_actions.py) answer as the routes do.

A request with a Content-Length takes the fast path; the same request sent in
chunks (no length) goes to the FastAPI routes. Both must give the same status
and the same body, for good requests and bad ones alike.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import Server

from opencone.api.app import create_app
from opencone.api.hot_actions import HotActions
from opencone.api.routes.actions import HOT

# fields that differ between any two answers (times, ids, a screenshot's token)
_VARYING = {"timestamp", "request_id", "screenshot_url", "executed_tab_id", "tab_id"}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("…" if k in _VARYING and v is not None else _stable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _both(server: Server, path: str, content: bytes, key: str | None = None,
          content_type: str = "application/json") -> tuple[tuple[int, Any], tuple[int, Any]]:
    """(fast path, FastAPI route) answers to the same request."""
    headers = {"content-type": content_type}
    with server.http(key) as http:
        fast = http.post(path, content=content, headers=headers)
        routed = http.post(path, content=iter([content]), headers=headers)  # chunked: no Content-Length
    assert "content-length" not in routed.request.headers and "content-length" in fast.request.headers
    return (fast.status_code, _stable(fast.json())), (routed.status_code, _stable(routed.json()))


GOOD = {
    "click": {"x": 5, "y": 5}, "double-click": {"x": 5, "y": 5}, "right-click": {"x": 5, "y": 5},
    "mouse-down": {"x": 5, "y": 5}, "mouse-up": {"x": 5, "y": 5}, "drag": {"x1": 5, "y1": 5, "x2": 9, "y2": 9},
    "type": {"text": "hi"}, "hotkey": {"keys": ["Escape"]}, "key-down": {"key": "Shift"}, "key-up": {"key": "Shift"},
    "scroll": {"x": 5, "y": 5, "dx": 0, "dy": 100}, "screenshot": {"base64": False},
}


def test_every_hot_route_is_tested() -> None:
    assert set(GOOD) == set(HOT)
    assert any(m.cls is HotActions for m in create_app().user_middleware)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_requests_answer_alike(server: Server, cid: str, name: str) -> None:
    fast, routed = _both(server, f"/computers/{cid}/{name}", json.dumps(GOOD[name]).encode())
    assert fast == routed and fast[0] == 200 and fast[1]["status"] == "success", (fast, routed)


@pytest.mark.parametrize(("what", "path", "body", "key", "content_type", "status"), [
    ("no field", "click", b'{"x": 5}', None, "application/json", 422),
    ("wrong type", "type", b'{"text": 5}', None, "application/json", 422),
    ("not JSON", "hotkey", b"{keys", None, "application/json", 422),
    ("empty body", "scroll", b"", None, "application/json", 422),
    ("out of range", "click", b'{"x": -5, "y": 5}', None, "application/json", 422),
    ("off the screen", "click", b'{"x": 5000, "y": 5}', None, "application/json", 200),
    ("bad key", "click", b'{"x": 5, "y": 5}', "wrong-key", "application/json", 401),
    ("form", "click", b"x=5&y=5", None, "application/x-www-form-urlencoded", 422),
])
def test_bad_requests_answer_alike(server: Server, cid: str, what: str, path: str, body: bytes, key: str | None,
                                   content_type: str, status: int) -> None:
    fast, routed = _both(server, f"/computers/{cid}/{path}", body, key, content_type)
    assert fast == routed and fast[0] == status, (what, fast, routed)


def test_an_unknown_computer_is_404_on_both(server: Server) -> None:
    fast, routed = _both(server, "/computers/comp_missing/click", b'{"x": 1, "y": 1}')
    assert fast == routed and fast[0] == 404 and "comp_missing" in fast[1]["detail"]


def test_a_missing_key_is_401_on_both(server: Server, cid: str) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        fast = http.post(f"/computers/{cid}/click", json={"x": 1, "y": 1})
        routed = http.post(f"/computers/{cid}/click", content=iter([b'{"x": 1, "y": 1}']))
    assert (fast.status_code, fast.json()) == (routed.status_code, routed.json()) and fast.status_code == 401
