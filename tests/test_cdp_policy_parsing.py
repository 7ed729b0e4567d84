"""The CDP policy's pre-check: messages it forwards without parsing, and the spellings that
must still be parsed (and refused). The refusals on a real server are in tests/test_cdp.py."""

from __future__ import annotations

import json

import pytest

from opencone.core import cdp_policy
from opencone.core.cdp_policy import CdpPolicy


@pytest.fixture
def policy(tmp_path: object) -> CdpPolicy:
    return CdpPolicy(str(tmp_path))


def test_unwatched_methods_are_forwarded_unparsed(policy: CdpPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("parsed a message the pre-check should have let through")

    monkeypatch.setattr(cdp_policy.json, "loads", no_parse)
    for raw in ('{"id":1,"method":"Runtime.enable"}', '{"id":2,"method":"Page.getFrameTree","sessionId":"S"}',
                '{"id":3,"method":"Input.dispatchMouseEvent","params":{"type":"mousePressed","x":1,"y":2}}'):
        verdict = policy.check(raw)
        assert verdict.forward is raw and verdict.reply is None


@pytest.mark.parametrize("method", [
    "Browser.cr\\u0061sh",  # a JSON escape in the name: the text never says "Browser.crash"
    "\\u0042rowser.crash",
    "Tethering\\u002ebind",
    "Browser.crash",
])
def test_escaped_or_plain_refused_methods_are_still_refused(policy: CdpPolicy, method: str) -> None:
    verdict = policy.check('{"id":7,"method":"' + method + '","params":{"port":9}}')
    assert verdict.forward is None and verdict.reply is not None
    answer = json.loads(verdict.reply)
    assert answer["id"] == 7 and answer["error"]["code"] == cdp_policy.SERVER_ERROR
    assert "not allowed" in answer["error"]["message"]


def test_a_file_url_in_escapes_is_still_refused(policy: CdpPolicy) -> None:
    verdict = policy.check('{"id":1,"method":"Page.navig\\u0061te","params":{"url":"file:///etc/passwd"}}')
    assert verdict.reply is not None and "only" in json.loads(verdict.reply)["error"]["message"]
    verdict = policy.check('{"id":2,"method":"Page.navigate","params":{"url":"file:///etc/passwd"}}')
    assert verdict.reply is not None


def test_watched_methods_still_get_their_relabel_and_rewrite(policy: CdpPolicy, tmp_path: object) -> None:
    verdict = policy.check('{"id":4,"method":"Target.attachToTarget","params":{"targetId":"T1"}}')
    assert verdict.relabel == "T1" and verdict.msg_id == 4
    verdict = policy.check('{"id":5,"method":"Browser.setDownloadBehavior","params":{"behavior":"allow",'
                           '"downloadPath":"/etc"}}')
    assert verdict.forward is not None and json.loads(verdict.forward)["params"]["downloadPath"] != "/etc"
