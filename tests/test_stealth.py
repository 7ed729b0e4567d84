"""Stealth: browser computers do not announce automation, and the ``stealth`` object.

tests/pages/detect.html runs the usual detection checks and writes the results
into its HTML; every assertion is about what the page itself saw.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import tzafon
from conftest import Server
from tzafon import Lightcone
from tzafon.lib.computer_session import ComputerSession

DETECT = re.compile(r"DETECT(\{.*?\})END", re.S)


def detect(session: ComputerSession, site: str) -> dict[str, Any]:
    result = session.navigate(f"{site}/detect.html")
    assert result.status == "success", result.error_message
    deadline = time.monotonic() + 10
    while True:
        html = session.get_html_content(session.html())
        match = DETECT.search(html)
        if match:
            return json.loads(match.group(1))
        assert time.monotonic() < deadline, "detect.html never reported"
        time.sleep(0.1)


def test_default_browser_passes_the_usual_checks(client: Lightcone, site: str) -> None:
    with client.computer.create(kind="browser") as session:
        r = detect(session, site)
    assert r["webdriver"] in (False, None)
    assert "HeadlessChrome" not in r["user_agent"] and "Chrome/" in r["user_agent"]
    assert r["ua_data_brands"] and "Google Chrome" in r["ua_data_brands"]
    assert r["ua_data_platform"] == "Linux" and r["ua_data_mobile"] is False
    assert r["plugins"] > 0 and r["mime_types"] > 0 and r["plugins_is_plugin_array"]
    assert "PDF Viewer" in r["plugin_names"]
    assert r["languages"] and r["language"] == r["languages"][0] == "en-US"
    assert r["chrome"] and r["chrome_runtime"] and r["chrome_load_times"] and r["chrome_csi"]
    assert r["permissions_consistent"], (r["notification_permission"], r["permission_state"])
    assert r["webgl_vendor"] and "SwiftShader" not in r["webgl_vendor"] and r["webgl_vendor"] != "Google Inc. (Google)"
    assert "SwiftShader" not in (r["webgl_renderer"] or "")
    assert r["native_functions"] and r["get_parameter_name"] == "getParameter"
    assert r["own_window_keys"] == []


def test_timezone_locale_and_screen_show_up_in_the_page(client: Lightcone, site: str) -> None:
    stealth = {"timezone": "Asia/Tokyo", "locale": "de-DE", "screen": {"width": 1920, "height": 1080}}
    with client.computer.create(kind="browser", stealth=stealth) as session:
        r = detect(session, site)
        # a tab opened later gets the same settings
        client.computers.tabs.create(session.id, url=f"{site}/page2.html")
        r2 = detect(session, site)
    for seen in (r, r2):
        assert seen["timezone"] == "Asia/Tokyo"
        assert seen["timezone_offset"] == -540  # UTC+9, no daylight saving
        assert seen["language"] == "de-DE" and seen["languages"][0] == "de-DE"
        assert seen["intl_locale"] == "de-DE"
        assert seen["screen"] == [1920, 1080]
        assert seen["webdriver"] in (False, None) and "HeadlessChrome" not in seen["user_agent"]


def test_user_agent_languages_and_device_scale_factor(client: Lightcone, site: str) -> None:
    ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/150.0.0.0 Safari/537.36"
    stealth = {"user_agent": ua, "languages": ["fr-FR", "fr", "en"], "device_scale_factor": 2}
    with client.computer.create(kind="browser", stealth=stealth) as session:
        r = detect(session, site)
        assert session.retrieve() is not None
    assert r["user_agent"] == ua
    assert r["languages"] == ["fr-FR", "fr", "en"] and r["language"] == "fr-FR"
    assert r["device_pixel_ratio"] == 2


def test_disabled_reports_the_raw_headless_values(client: Lightcone, site: str) -> None:
    with client.computer.create(kind="browser", stealth={"enabled": False}) as session:
        r = detect(session, site)
    assert r["webdriver"] is True
    assert "HeadlessChrome" in r["user_agent"]
    assert "SwiftShader" in (r["webgl_renderer"] or "")
    assert not r["chrome_runtime"]


def test_unknown_key_and_bad_values_are_422(server: Server) -> None:
    with server.http() as http:
        r = http.post("/computers", json={"kind": "browser", "stealth": {"colour": 1}})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "colour" in detail and "timezone" in detail and "user_agent" in detail
        r = http.post("/computers", json={"stealth": {"timezone": "Mars/Olympus_Mons"}})
        assert r.status_code == 422 and "Mars/Olympus_Mons" in r.json()["detail"]
        r = http.post("/computers", json={"stealth": {"locale": "not a locale"}})
        assert r.status_code == 422 and "locale" in r.json()["detail"]
        r = http.post("/computers", json={"stealth": {"screen": {"width": 1920}}})
        assert r.status_code == 422 and "screen" in r.json()["detail"]
        r = http.post("/computers", json={"display": {"scale": 1}, "stealth": {"device_scale_factor": 2}})
        assert r.status_code == 422 and "device_scale_factor" in r.json()["detail"]
        r = http.post("/computers", json={"kind": "desktop", "stealth": {"timezone": "UTC"}})
        assert r.status_code == 422 and "browser" in r.json()["detail"]


def test_unknown_key_through_the_sdk(client: Lightcone) -> None:
    with pytest.raises(tzafon.UnprocessableEntityError) as err:
        client.computers.create(kind="browser", stealth={"colour": 1})
    assert "unknown stealth key 'colour'" in err.value.body["detail"]
