"""The seed-era Notte contract, without any Notte package: the exact JSON bodies that
``notte==1.2.1`` sends (spec/notte-session-api.md §(a), recorded from the real client) are
replayed with httpx, and every answer is held to a schema written here from that spec.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import jsonschema_rs
import pytest
from conftest import Server, wait_until

ISO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
ISO_DURATION = r"^P(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
SESSION = {
    "type": "object",
    "required": ["session_id", "timeout_minutes", "created_at", "last_accessed_at", "duration", "status", "error",
                 "closed_at"],
    "properties": {
        "session_id": {"type": "string", "minLength": 1},
        "timeout_minutes": {"type": "integer", "minimum": 1, "maximum": 30},
        "created_at": {"type": "string", "pattern": ISO_TIME},
        "last_accessed_at": {"type": "string", "pattern": ISO_TIME},
        "closed_at": {"oneOf": [{"type": "null"}, {"type": "string", "pattern": ISO_TIME}]},
        "duration": {"type": "string", "pattern": ISO_DURATION},
        "status": {"enum": ["active", "closed", "error", "timed_out"]},
        "error": {"type": ["string", "null"]},
    },
}
PARAM = {"type": "object", "required": ["name", "type"],
         "properties": {"name": {"type": "string"}, "type": {"type": "string"},
                        "values": {"type": "array", "items": {"type": "string"}}}}
ACTION = {
    "type": "object", "required": ["id", "description", "category", "params", "status"],
    "properties": {"id": {"type": "string", "pattern": "^[LBIFOM][0-9]+$"}, "description": {"type": "string"},
                   "category": {"type": "string", "minLength": 1}, "params": {"type": "array", "items": PARAM},
                   "status": {"enum": ["valid", "failed", "excluded"]}},
}
SPECIAL = {"type": "object", "required": ["id", "description", "category", "params", "status"],
           "properties": {"id": {"type": "string", "pattern": "^S[1-8]$"}, "params": {"type": "array", "items": PARAM}}}
OBSERVE = {
    "type": "object",
    "required": ["session", "metadata", "screenshot", "data", "space"],
    "not": {"anyOf": [{"required": ["status"]}, {"required": ["detail"]}]},  # the client takes those for errors
    "properties": {
        "session": SESSION,
        "metadata": {"type": "object", "required": ["title", "url", "timestamp"],
                     "properties": {"title": {"type": "string"}, "url": {"type": "string"},
                                    "timestamp": {"type": "string", "pattern": ISO_TIME}}},
        "screenshot": {"type": ["string", "null"]},
        "data": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["markdown"],
            "properties": {"markdown": {"type": ["string", "null"]},
                           "images": {"oneOf": [{"type": "null"}, {"type": "array", "items": {
                               "type": "object", "required": ["id"],
                               "properties": {"id": {"type": "string"}, "url": {"type": ["string", "null"]},
                                              "category": {"type": "null"}}}}]},
                           "structured": {"type": ["array", "null"]}}}]},
        "space": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["description", "actions", "special_actions", "category"],
            "properties": {"markdown": {"type": ["string", "null"]}, "description": {"type": "string"},
                           "category": {"oneOf": [{"type": "null"}, {"enum": [
                               "homepage", "search-results", "data-feed", "item", "auth", "form", "manage-cookies",
                               "payment", "captcha", "other"]}]},
                           "actions": {"type": "array", "items": ACTION},
                           "special_actions": {"type": "array", "items": SPECIAL, "minItems": 8}}}]},
    },
}
ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string", "minLength": 1}}}


def check(schema: dict[str, Any], body: Any) -> None:
    errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert not errors, errors


@pytest.fixture
def http(server: Server) -> Any:
    with httpx.Client(base_url=server.base_url, timeout=60,
                      headers={"authorization": f"Bearer {server.api_key}"}) as client:
        yield client


def _session_fields(sid: str | None) -> dict[str, Any]:
    return {"session_id": sid, "keep_alive": True, "session_timeout_minutes": 10, "screenshot": None}


def test_the_recorded_bodies_of_the_seed_client(http: httpx.Client, server: Server, site: str) -> None:
    r = http.post("/session/start", json={"session_id": None, "keep_alive": True, "session_timeout_minutes": 10,
                                          "screenshot": None})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    started = r.json()
    check(SESSION, started)
    assert started["status"] == "active" and started["timeout_minutes"] == 10 and started["closed_at"] is None
    sid = started["session_id"]

    r = http.post("/env/observe", json={"min_nb_actions": None, "max_nb_actions": 100, "session_id": sid,
                                        "keep_alive": True, "session_timeout_minutes": 10, "screenshot": None,
                                        "url": f"{site}/perception.html"})
    assert r.status_code == 200, r.text
    observed = r.json()
    check(OBSERVE, observed)
    assert observed["session"]["session_id"] == sid and observed["screenshot"] is None
    assert observed["space"]["actions"][0]["id"] == "L1"
    inputs = [x for x in observed["space"]["actions"] if x["id"].startswith("I")]
    assert inputs and all(len(x["params"]) == 1 for x in inputs)  # an input takes exactly its value

    r = http.post("/env/step", json={**_session_fields(sid), "min_nb_actions": None, "max_nb_actions": 100,
                                     "action_id": "L1", "value": None, "enter": None})
    assert r.status_code == 200, r.text
    stepped = r.json()
    check(OBSERVE, stepped)
    assert stepped["metadata"]["url"].endswith("/perception_next.html")

    r = http.post("/env/scrape", json={**_session_fields(sid), "min_nb_actions": None, "max_nb_actions": 100,
                                       "url": None, "scrape_images": False, "only_main_content": True})
    assert r.status_code == 200, r.text
    scraped = r.json()
    check(OBSERVE, scraped)
    assert "# The next page" in scraped["data"]["markdown"] and scraped["data"]["images"] is None

    r = http.post("/session/close", json={"session_id": sid, "keep_alive": True, "session_timeout_minutes": 10,
                                          "screenshot": None})  # keep_alive as the client sends it: ignored
    assert r.status_code == 200
    closed = r.json()
    check(SESSION, closed)
    assert closed["status"] == "closed" and re.match(ISO_TIME, closed["closed_at"])
    assert closed["last_accessed_at"] == scraped["session"]["last_accessed_at"]  # closing is no access
    again = http.post("/session/close", json={"session_id": sid}).json()  # idempotent
    assert again["status"] == "closed" and again["closed_at"] == closed["closed_at"]


def test_screenshots_images_and_one_shot_operations(http: httpx.Client, site: str) -> None:
    r = http.post("/env/scrape", json={"url": f"{site}/article.html", "scrape_images": True, "screenshot": True})
    assert r.status_code == 200, r.text
    body = r.json()
    check(OBSERVE, body)
    assert base64.b64decode(body["screenshot"])[:2] == b"\xff\xd8"  # base64 JPEG
    assert body["data"]["images"] == [{"id": "F1", "url": f"{site}/tomato.png", "category": None}]
    assert body["session"]["status"] == "closed"  # no keep_alive: made for the call, closed after it
    assert "Footer text" not in body["data"]["markdown"]
    full = http.post("/env/scrape", json={"url": f"{site}/article.html", "only_main_content": False}).json()
    assert "Footer text" in full["data"]["markdown"]


@pytest.mark.parametrize("path, body, says", [
    ("/session/start", {"session_id": "comp_x"}, "session_id"),
    ("/session/start", {"session_timeout_minutes": 0}, "session_timeout_minutes"),
    ("/session/start", {"session_timeout_minutes": 31}, "session_timeout_minutes"),
    ("/session/start", {"keep_alive": "perhaps"}, "keep_alive"),
    ("/session/close", {}, "session_id"),
    ("/session/close", {"session_id": "comp_0000000000000000"}, "no session"),
    ("/env/observe", {"session_id": "comp_0000000000000000"}, "no session"),
    ("/env/step", {"keep_alive": True}, "action_id"),
    ("/env/scrape", {}, "url"),
    ("/env/observe", {"url": "file:///etc/passwd"}, "scheme"),
])
def test_bad_input_is_a_400_with_a_detail(http: httpx.Client, path: str, body: dict[str, Any], says: str) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    check(ERROR, r.json())
    assert says in r.json()["detail"]


def test_bodies_the_guard_refuses_are_400s_too(http: httpx.Client) -> None:
    for content in (b'{"session_id": "\\ud800"}', b"{not json", b"\xff\xfe"):
        r = http.post("/session/start", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, (content, r.text)
        check(ERROR, r.json())


def test_operations_on_an_ended_session_name_its_state(http: httpx.Client, site: str) -> None:
    sid = http.post("/session/start", json={"keep_alive": True}).json()["session_id"]
    http.post("/session/close", json={"session_id": sid})
    for path, extra in (("/env/observe", {}), ("/env/step", {"action_id": "L1"}), ("/env/scrape", {})):
        r = http.post(path, json={"session_id": sid, "keep_alive": True, **extra})
        assert r.status_code == 400 and "closed" in r.json()["detail"], (path, r.text)
    # a step on an id the last observation does not have
    sid = http.post("/session/start", json={"keep_alive": True}).json()["session_id"]
    http.post("/env/observe", json={"session_id": sid, "keep_alive": True, "url": f"{site}/page2.html"})
    r = http.post("/env/step", json={"session_id": sid, "keep_alive": True, "action_id": "B7"})
    assert r.status_code == 400 and "B7" in r.json()["detail"]
    r = http.post("/env/step", json={"session_id": sid, "keep_alive": True, "action_id": "S8"})  # terminate
    assert r.status_code == 200 and r.json()["session"]["status"] == "closed"
    assert wait_until(lambda: http.get(f"/computers/{sid}").json()["status"] == "terminated")
