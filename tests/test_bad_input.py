"""Bad input gets a clear 4xx (or an ActionResult error), never a 500 or a hung computer."""

from __future__ import annotations

import pytest
import tzafon
from conftest import Server
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
