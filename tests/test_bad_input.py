"""Bad input gets a clear 4xx (or an ActionResult error), never a 500 or a hung computer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tzafon
from conftest import Server, page_state
from tzafon import Lightcone


def test_unknown_computer_is_404(client: Lightcone) -> None:
    for call in (
        lambda: client.computers.retrieve("comp_missing"),
        lambda: client.computers.click("comp_missing", x=1, y=1),
        lambda: client.computers.delete("comp_missing"),
        lambda: client.computers.keepalive("comp_missing"),
        lambda: client.computers.tabs.list("comp_missing"),
    ):
        with pytest.raises(tzafon.NotFoundError) as err:
            call()
        assert "comp_missing" in err.value.body["detail"]


def _post(server: Server, path: str, **kw):  # type: ignore[no-untyped-def]
    with server.http() as http:
        return http.post(path, **kw)


def test_missing_field_names_the_field(server: Server, cid: str) -> None:
    r = _post(server, f"/computers/{cid}/click", json={"x": 10})
    assert r.status_code == 422
    body = r.json()
    assert body["errors"][0]["field"] == "y"
    assert "y" in body["detail"]


def test_unknown_action_type_lists_the_allowed_ones(server: Server, cid: str) -> None:
    r = _post(server, f"/computers/{cid}/execute", json={"action": {"type": "teleport"}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "action.type" in detail
    for allowed in ("click", "go_to_url", "point_and_type", "mouse_up"):
        assert allowed in detail


def test_a_bad_action_rejects_the_whole_batch_before_it_runs(server: Server, client: Lightcone, cid: str) -> None:
    before = client.computers.retrieve(cid).last_activity_at
    r = _post(server, f"/computers/{cid}/batch", json={"actions": [
        {"type": "click", "x": 5, "y": 5},
        {"type": "keypress", "keys": ["ctrl", "hyperspace"]},
    ]})
    assert r.status_code == 422
    assert "actions[1]" in r.json()["detail"] and "hyperspace" in r.json()["detail"]
    assert client.computers.retrieve(cid).last_activity_at == before  # nothing ran


def test_keys_are_validated(client: Lightcone, cid: str) -> None:
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.hotkey(cid, keys=[])
    assert "keys" in err.value.body["detail"]
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.key_down(cid, key="nosuchkey")
    assert "allowed" in err.value.body["detail"] and "f1-f24" in err.value.body["detail"]


def test_coordinates(client: Lightcone, cid: str) -> None:
    outside = client.computers.click(cid, x=5000, y=10)
    assert outside.status == "error"
    assert "outside the screen" in outside.error_message and "1024" in outside.error_message
    with pytest.raises(tzafon.UnprocessableEntityError):
        client.computers.click(cid, x=-1, y=10)
    with pytest.raises(tzafon.UnprocessableEntityError):
        client.computers.drag(cid, x1=1, y1=1, x2=1e12, y2=1)
    assert client.computers.click(cid, x=5, y=5).status == "success"  # still usable


def test_absurd_sizes(client: Lightcone, cid: str) -> None:
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.viewport(cid, width=100000, height=600)
    assert "width" in err.value.body["detail"]
    with pytest.raises(tzafon.UnprocessableEntityError):
        client.computers.create(display={"width": 10, "height": 10})
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.create(max_lifetime_seconds=10**9)
    assert "max_lifetime_seconds" in err.value.body["detail"]
    with pytest.raises(tzafon.UnprocessableEntityError):
        client.computers.execute(cid, action={"type": "wait", "ms": 10**9})


def test_urls_must_be_web_urls(client: Lightcone, cid: str) -> None:
    for url in ("file:///etc/passwd", "chrome://settings", "javascript:alert(1)", "http://"):
        with pytest.raises(tzafon.UnprocessableEntityError) as err:
            client.computers.navigate(cid, url=url)
        assert "URL" in err.value.body["detail"]


def test_malformed_json_and_wrong_types(server: Server, cid: str) -> None:
    r = _post(server, f"/computers/{cid}/click", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]
    r = _post(server, f"/computers/{cid}/type", json={"text": 5})
    assert r.status_code == 422
    r = _post(server, "/computers", json={"kind": "mainframe"})
    assert r.status_code == 422 and "browser" in r.json()["detail"]
    with server.http() as http:
        r = http.get("/computers", params={"type": "dead"})
    assert r.status_code == 422 and "persistent" in r.json()["detail"]


def test_malformed_proxy_url_answers_clearly(client: Lightcone, cid: str) -> None:
    result = client.computers.change_proxy(cid, proxy_url="ftp://127.0.0.1:1")  # more in test_proxy.py
    assert result.status == "error" and "unsupported proxy scheme 'ftp'" in result.error_message


def test_ws_without_upgrade_is_a_4xx(client: Lightcone, cid: str) -> None:
    with pytest.raises(tzafon.APIStatusError) as err:
        client.computers.retrieve_ws(cid)
    assert 400 <= err.value.status_code < 500


# -- what the system below cannot carry: lone surrogates, NUL, depth, size ----------------------
# Each class on every route that takes it. A refusal is a 4xx problem+json (the exec stream: its one
# error line) that names the field and what is allowed, and nothing of the request has happened.

LONE = "\\ud800"  # a lone UTF-16 surrogate as JSON spells it (Python's json accepts it; UTF-8 cannot carry it)


def _raw(server: Server, method: str, path: str, text: str | bytes, key: str | None = None,
         **kw: Any) -> httpx.Response:
    content = text.encode() if isinstance(text, str) else text
    with server.http(key) as http:
        return http.request(method, path, content=content, headers={"content-type": "application/json"}, **kw)


def _refused(r: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """A problem+json refusal whose detail has every fragment; its body is valid UTF-8 JSON."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    body = json.loads(r.content.decode("utf-8"))  # strict: an answer never carries a surrogate either
    assert body["status"] == status and body["detail"] == body["error_message"]
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def _stream_refused(server: Server, cid: str, text: str | bytes, status: int, *fragments: str) -> None:
    """The exec stream says a refusal as it says every error: HTTP 200, one NDJSON error line."""
    r = _raw(server, "POST", f"/computers/{cid}/exec", text)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text[:300]
    lines = [json.loads(line) for line in r.content.decode("utf-8").splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "error" and lines[0]["status"] == status, lines
    for fragment in fragments:
        assert fragment in lines[0]["message"], lines[0]["message"]


def _activity(client: Lightcone, cid: str) -> str:
    return client.computers.retrieve(cid).last_activity_at


# (route under /computers/{id}, body with %s where the surrogate goes, the field the answer names)
SURROGATES = [
    ("click", '{"x": 5, "y": 5, "request_id": "%s"}', "request_id"),
    ("double-click", '{"x": 5, "y": 5, "tab_id": "a%s"}', "tab_id"),
    ("right-click", '{"x": 5, "y": 5, "request_id": "%s"}', "request_id"),
    ("mouse-down", '{"x": 5, "y": 5, "tab_id": "%s"}', "tab_id"),
    ("mouse-up", '{"x": 5, "y": 5, "request_id": "%s"}', "request_id"),
    ("drag", '{"x1": 1, "y1": 1, "x2": 9, "y2": 9, "request_id": "%s"}', "request_id"),
    ("type", '{"text": "a%sb"}', "text"),
    ("hotkey", '{"keys": ["ctrl", "%s"]}', "keys[1]"),
    ("key-down", '{"key": "%s"}', "key"),
    ("key-up", '{"key": "%s"}', "key"),
    ("scroll", '{"dy": 10, "tab_id": "%s"}', "tab_id"),
    ("navigate", '{"url": "http://example.com/%s"}', "url"),
    ("screenshot", '{"request_id": "%s"}', "request_id"),
    ("html", '{"tab_id": "%s"}', "tab_id"),
    ("viewport", '{"width": 800, "height": 600, "request_id": "%s"}', "request_id"),
    ("debug", '{"command": "echo %s"}', "command"),
    ("change-proxy", '{"proxy_url": "http://%s:1"}', "proxy_url"),
    ("execute", '{"action": {"type": "type", "text": "%s"}}', "action.text"),
    ("execute", '{"action": {"type": "keypress", "keys": ["%s"]}}', "action.keys[0]"),
    ("execute", '{"action": {"type": "debug", "debug": {"command": "true", "env": {"%s": "1"}}}}',
     "action.debug.env"),
    ("batch", '{"actions": [{"type": "wait", "ms": 1}, {"type": "go_to_url", "url": "%s"}]}', "actions[1].url"),
    ("batch", '{"actions": [{"type": "key_down", "key": "a"}], "request_id": "%s"}', "request_id"),
    ("tabs", '{"url": "http://example.com/%s"}', "url"),
    ("exec/sync", '{"command": "true %s"}', "command"),
    ("exec/sync", '{"command": "true", "cwd": "%s"}', "cwd"),
    ("exec/sync", '{"command": "true", "env": {"A": "%s"}}', "env.A"),
    ("exec/sync", '{"command": "true", "env": {"%s": "1"}}', "env"),
    ("exec/sync", '{"command": "true", "request_id": "%s"}', "request_id"),
    ("click", '{"x": 5, "y": 5, "ignored": {"%s": 1}}', "ignored"),  # even a field nobody reads
]


@pytest.mark.parametrize("route, body, field", SURROGATES, ids=[f"{r}:{f}" for r, _, f in SURROGATES])
def test_a_lone_surrogate_is_refused_before_anything_runs(server: Server, client: Lightcone, cid: str,
                                                          route: str, body: str, field: str) -> None:
    before = _activity(client, cid)
    r = _raw(server, "POST", f"/computers/{cid}/{route}", body % LONE)
    problem = _refused(r, 422, f"{field}:", "lone UTF-16 surrogate", "\\ud800")
    assert problem["errors"][0]["field"] == field
    assert _activity(client, cid) == before  # nothing ran: no action, no command


@pytest.mark.parametrize("body, field", [
    ('{"context_id": "%s"}', "context_id"),
    ('{"environment_id": "%s"}', "environment_id"),
    ('{"stealth": {"user_agent": "Mozilla %s"}}', "stealth.user_agent"),
    ('{"stealth": {"languages": ["en", "%s"]}}', "stealth.languages[1]"),
])
def test_a_lone_surrogate_in_a_create_body_makes_no_computer(server: Server, client: Lightcone,
                                                               body: str, field: str) -> None:
    before = server.health()["computers"]
    _refused(_raw(server, "POST", "/computers", body % LONE), 422, f"{field}:", "lone UTF-16 surrogate")
    assert server.health()["computers"] == before


@pytest.mark.parametrize("body, fragments", [
    ('{"command": "true", "cwd": "\\ud800"}', ("cwd", "surrogate")),
    ('{"command": "true", "env": {"A": "\\ud800"}}', ("env.A", "surrogate")),
    ('{"command": "true", "cwd": "a\\u0000b"}', ("cwd", "NUL")),
    ('{"command": "true", "env": {"\\ud800": "1"}}', ("env", "a key", "surrogate")),
    ('{"command": "true", "env": {"A": "' + "x" * 200_000 + '"}}', ("env", "131071")),
    ("[" * 100_000, ("nested deeper than 200",)),
])
def test_the_exec_stream_refuses_in_its_own_terms(server: Server, cid: str, body: str,
                                                  fragments: tuple[str, ...]) -> None:
    _stream_refused(server, cid, body, 422, *fragments)


# NUL where an OS path, an argument or an environment string would take it
NULS = [
    ("exec/sync", '{"command": "true", "cwd": "a\\u0000b"}', "cwd"),
    ("exec/sync", '{"command": "true", "cwd": "/workspace/\\u0000"}', "cwd"),
    ("exec/sync", '{"command": "true", "env": {"A\\u0000B": "1"}}', "env"),
    ("exec/sync", '{"command": "true", "env": {"A": "1\\u0000"}}', "env"),
    ("exec/sync", '{"command": "true\\u0000"}', "command"),
    ("debug", '{"command": "true\\u0000false"}', "command"),
    ("execute", '{"action": {"type": "debug", "debug": {"command": "true", "cwd": "a\\u0000"}}}', "cwd"),
    ("execute", '{"action": {"type": "debug", "debug": {"command": "true", "env": {"A": "\\u0000"}}}}', "env"),
    ("batch", '{"actions": [{"type": "debug", "debug": {"command": "true", "cwd": "\\u0000"}}]}', "cwd"),
    ("key-down", '{"key": "\\u0000"}', "key"),
    ("hotkey", '{"keys": ["shift", "\\u0000"]}', "keys"),
]


@pytest.mark.parametrize("route, body, field", NULS, ids=[f"{r}:{f}" for r, _, f in NULS])
def test_nul_is_refused_where_the_os_would_take_it(server: Server, client: Lightcone, cid: str,
                                                   route: str, body: str, field: str) -> None:
    before = _activity(client, cid)
    r = _raw(server, "POST", f"/computers/{cid}/{route}", body)
    _refused(r, 422, field, "NUL" if route not in ("key-down", "hotkey") else "unknown key")
    assert _activity(client, cid) == before


def test_nul_in_a_user_agent_makes_no_computer(server: Server) -> None:
    before = server.health()["computers"]
    r = _raw(server, "POST", "/computers", '{"stealth": {"user_agent": "Mozilla\\u0000/5.0"}}')
    _refused(r, 422, "stealth.user_agent", "control characters")
    assert server.health()["computers"] == before


def test_files_paths_with_nul_or_junk_are_404_without_a_key(server: Server) -> None:
    for path in ("a%00b.jpg", "x.jpg%00", "%00", "%ED%A0%80.jpg", f"{'A' * 32}%00.jpg"):
        r = httpx.get(f"{server.base_url}/files/{path}", timeout=10)
        _refused(r, 404, "unknown or expired file link")


DEEP = [
    ("[" * 100_000 + "]" * 100_000),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000),
    ("[" * 100_000),  # never closed
    ('{"x": 5, "y": 5, "extra": ' + "[" * 300 + "]" * 300 + "}"),  # past the limit, within the stdlib's
]
DEEP_ROUTES = ["click", "type", "navigate", "execute", "batch", "tabs", "exec/sync", "debug", "keepalive"]


@pytest.mark.parametrize("route", DEEP_ROUTES)
def test_deep_json_is_refused_before_it_is_parsed(server: Server, client: Lightcone, cid: str, route: str) -> None:
    before = _activity(client, cid)
    for deep in DEEP:
        body = _refused(_raw(server, "POST", f"/computers/{cid}/{route}", deep), 422, "nested deeper than 200")
        assert body["errors"] == [{"field": "body", "message": body["detail"].removeprefix("body: ")}]
    assert _activity(client, cid) == before
    _refused(_raw(server, "POST", "/computers", DEEP[0]), 422, "nested deeper than 200")
    nested = '{"x": 5, "y": 5, "extra": ' + "[" * 150 + "]" * 150 + "}"  # within the limit: taken
    r = _raw(server, "POST", f"/computers/{cid}/click", nested)
    assert r.status_code == 200 and r.json()["status"] == "success"


def test_a_body_that_is_not_utf8_is_422(server: Server, cid: str) -> None:
    for route in ("click", "navigate", "exec/sync"):
        _refused(_raw(server, "POST", f"/computers/{cid}/{route}", b'{"url": "\xed\xa0\x80"}'), 422, "UTF-8")


MAX_BODY = 8 * 1024 * 1024  # OPENCONE_MAX_BODY_BYTES's default


@pytest.mark.parametrize("route", ["click", "type", "batch", "exec/sync"])
def test_a_body_over_the_limit_is_413_before_it_is_read(server: Server, cid: str, route: str) -> None:
    big = '{"text": "' + "a" * MAX_BODY + '"}'
    _refused(_raw(server, "POST", f"/computers/{cid}/{route}", big), 413, "OPENCONE_MAX_BODY_BYTES",
             str(MAX_BODY))

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"text": "'
        for _ in range(9):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    with server.http() as http:
        r = http.post(f"/computers/{cid}/{route}", content=chunks(), headers={"content-type": "application/json"})
    _refused(r, 413, "OPENCONE_MAX_BODY_BYTES")
    # a body under the limit reaches its route, whose model refuses it for its own reasons
    body = _refused(_raw(server, "POST", f"/computers/{cid}/{route}", '{"text": "' + "a" * (MAX_BODY - 100) + '"}'),
                    422)
    assert "OPENCONE_MAX_BODY_BYTES" not in body["detail"]


def test_the_exec_stream_says_413_in_a_line(server: Server, cid: str) -> None:
    _stream_refused(server, cid, '{"command": "true", "env": {"A": "' + "a" * MAX_BODY + '"}}', 413,
                    "OPENCONE_MAX_BODY_BYTES")


@pytest.mark.parametrize("env, fragments", [
    ({"A": "x" * 200_000}, ("'A'", "131071", "one environment string")),
    ({f"V{i}": "1" for i in range(2000)}, ("2000 variables", "1024")),
    ({f"V{i}": "x" * 100_000 for i in range(12)}, ("1048576", "ARG_MAX")),
])
def test_an_env_too_large_for_the_kernel_is_422_naming_the_limit(server: Server, client: Lightcone, cid: str,
                                                                env: dict[str, str],
                                                                fragments: tuple[str, ...]) -> None:
    before = _activity(client, cid)
    body = json.dumps({"command": "true", "env": env})
    _refused(_raw(server, "POST", f"/computers/{cid}/exec/sync", body), 422, "env", *fragments)
    _stream_refused(server, cid, body, 422, "env", *fragments)
    action = json.dumps({"action": {"type": "debug", "debug": {"command": "true", "env": env}}})
    _refused(_raw(server, "POST", f"/computers/{cid}/execute", action), 422, "env", *fragments)
    assert _activity(client, cid) == before


def test_an_env_at_the_limits_reaches_the_command_and_one_byte_more_is_422(client: Lightcone, cid: str) -> None:
    env = {f"V{i}": str(i) for i in range(1000)}
    env["BIG"] = "y" * (131_071 - len("BIG="))  # KEY=value: the kernel's longest string
    res = client.computers.exec.sync(cid, command='printf "%s %s" "${#BIG}" "$V999"', env=env)
    assert res.exit_code == 0 and res.stdout == f"{131_071 - 4} 999", res.stderr
    env["BIG"] += "y"
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.exec.sync(cid, command="true", env=env)
    assert "'BIG'" in err.value.body["detail"] and "131071" in err.value.body["detail"]


def test_a_refused_key_is_never_sent(server: Server, client: Lightcone, cid: str, site: str) -> None:
    """Proved on the page, which logs every key event: nothing of a refused request reaches it."""
    assert client.computers.navigate(cid, url=f"{site}/playground.html").status == "success"
    assert client.computers.click(cid, x=100, y=135).status == "success"  # the input has the focus
    refused = [
        ("key-down", '{"key": "\\ud800"}'),
        ("key-down", '{"key": "\\u0000"}'),
        ("key-up", '{"key": "\\u0007"}'),
        ("hotkey", '{"keys": ["shift", "\\ud800"]}'),  # the shift went down and up before
        ("batch", '{"actions": [{"type": "key_down", "key": "shift"}, {"type": "key_down", "key": "\\ud800"}]}'),
        ("execute", '{"action": {"type": "key_down", "keys": ["a", "\\u0000"]}}'),
    ]
    for route, body in refused:
        r = _raw(server, "POST", f"/computers/{cid}/{route}", body)
        assert r.status_code == 422, (route, body, r.text[:300])
    state = page_state(client.computers.html(cid).result["html_content"])
    assert state["downs"] == [] and state["ups"] == [], state
    # the page is listening: a key that is allowed does arrive
    assert client.computers.key_down(cid, key="\t").status == "success"
    assert client.computers.key_up(cid, key="\t").status == "success"
    assert page_state(client.computers.html(cid).result["html_content"])["downs"] == ["Tab"]


def test_a_lone_surrogate_from_a_page_never_breaks_an_answer(server: Server, client: Lightcone, cid: str) -> None:
    """JavaScript strings may hold lone surrogates; the answers carry U+FFFD in their place."""
    url = "data:text/html,<script>document.title='\\ud800 title'</script><p>x</p>"
    assert client.computers.navigate(cid, url=url).status == "success"
    with server.http() as http:
        for r in (http.get(f"/computers/{cid}/tabs"), http.post(f"/computers/{cid}/html", json={}),
                  http.post(f"/computers/{cid}/execute", json={"action": {"type": "list_tabs"}}),
                  http.post(f"/computers/{cid}/click", json={"x": 5, "y": 5, "include_context": True})):
            assert r.status_code == 200, r.text[:300]
            text = r.content.decode("utf-8")  # strict
            assert "\ufffd title" in text and json.loads(text)["status"] == "success"
