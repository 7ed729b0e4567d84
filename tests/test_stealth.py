"""Stealth: browser computers do not announce automation, and the ``stealth`` object.

tests/pages/detect.html runs the usual detection checks and writes the results
into its HTML; every assertion is about what the page itself saw.
"""

from __future__ import annotations

import json
import re
import time
from html import unescape
from typing import Any

import pytest
import tzafon
from conftest import Server, wait_until
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
    assert r["method_flags"] == [[True, True, True]] * 3  # as the native methods' (WebIDL operations)
    # getParameter is wrapped on each context's first make, WebGL2 and OffscreenCanvas in the document too
    assert r["webgl2_vendor"] == r["offscreen_webgl_vendor"] == r["webgl_vendor"]
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
        # (the browser started with it: a service worker has it in its first script)
        assert session.navigate(f"{site}/stealth_workers.html").status == "success"
        assert wait_until(lambda: _report(client, session.id) is not None), "stealth_workers.html never reported"
        workers = _report(client, session.id)
    assert workers is not None and workers["service"]["user_agent"] == ua
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
    assert r["method_flags"] == [[True, True, True]] * 3  # the native flags, which stealth keeps


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


# -- popups and workers: the overrides are there before their first script ---------------------

REPORT = re.compile(r"(STEALTH|WORKERS)(\{.*?\})END", re.S)
CHROME_UA = re.compile(r"^Mozilla/5\.0 \(X11; Linux x86_64\) AppleWebKit/537\.36 \(KHTML, like Gecko\) Chrome/\d")
NATIVE_UA_GETTER = "function get userAgent() { [native code] }"
INTEL = "Google Inc. (Intel)"
# where stealth_opener.html puts its three ways to open a popup, and stealth_popup.html its button
OPENERS = {"same": (170, 50), "blank": (170, 130), "cross": (170, 210)}
PROBE_AGAIN = (170, 50)


def _report(client: Lightcone, computer_id: str, tab_id: str | None = None) -> dict[str, Any] | None:
    """The STEALTH{…}END / WORKERS{…}END report in a tab's HTML, once it is there."""
    result = client.computers.html(computer_id, **({"tab_id": tab_id} if tab_id else {}))
    match = REPORT.search(unescape(result.result["html_content"] if result.result else ""))
    return json.loads(match.group(2)) if match else None


def _popup(client: Lightcone, session: ComputerSession, via: str, then: str | None = None) -> dict[str, Any]:
    """Open a popup from stealth_opener.html; what its first script reported. Closes it again.

    With ``then``, the popup is navigated there first, and its report is ``then``'s.
    """
    assert session.click(*OPENERS[via]).status == "success"
    found: dict[str, Any] = {}

    def opened() -> bool:
        tabs = client.computers.tabs.list(session.id).result["tabs"]
        found.update(next((t for t in tabs if f"via={via}" in t["url"]), {}))
        return bool(found) and _report(client, session.id, found["tab_id"]) is not None

    assert wait_until(opened), f"the {via} popup never reported"
    report = _report(client, session.id, found["tab_id"])
    if then:
        assert client.computers.navigate(session.id, url=then, tab_id=found["tab_id"]).status == "success"
        report = _report(client, session.id, found["tab_id"])
    assert client.computers.tabs.delete(found["tab_id"], id=session.id).status == "success"
    assert report is not None
    return report


def _looks_like_desktop_chrome(seen: dict[str, Any]) -> None:
    assert CHROME_UA.match(seen["user_agent"]) and "Headless" not in seen["user_agent"], seen["user_agent"]
    assert seen["app_version"] == seen["user_agent"].removeprefix("Mozilla/")
    assert seen["ua_getter"] == NATIVE_UA_GETTER
    assert seen["webgl_vendor"] == INTEL and "SwiftShader" not in (seen["webgl_renderer"] or "")


def test_popups_have_every_override_in_their_first_script(client: Lightcone, site: str) -> None:
    stealth = {"timezone": "Asia/Tokyo", "locale": "de-DE", "screen": {"width": 1920, "height": 1080}}
    with client.computer.create(kind="browser", stealth=stealth) as session:
        assert session.navigate(f"{site}/stealth_opener.html").status == "success"
        reports = {via: _popup(client, session, via) for via in OPENERS}
        other_site = site.replace("127.0.0.1", "localhost")
        reports["cross, next"] = _popup(client, session, "cross", f"{other_site}/stealth_popup.html?via=next")
    for via, seen in reports.items():
        assert seen["webdriver"] is False, via  # the launch flag
    # A popup without an opener waits in a renderer of its own until every override is in;
    # the popup on another site has them all from its next document on.
    for via in ("blank", "cross, next"):
        seen = reports[via]
        _looks_like_desktop_chrome(seen)
        assert (seen["timezone"], seen["locale"], seen["languages"]) == ("Asia/Tokyo", "de-DE", ["de-DE", "de"]), via
        assert seen["ua_data_brands"] == ["Chromium", "Google Chrome", "Not=A?Brand"], via
        assert seen["screen"] == [1920, 1080], via
    # window.open of the same site: Playwright lets the popup go, after installing the script
    # (user agent string, WebGL); locale and timezone are its opener's renderer's. (Its other
    # overrides race and win, measured; and a popup on another site races for all of them in
    # its first document, the script included: see stealth.py.)
    _looks_like_desktop_chrome(reports["same"])
    assert (reports["same"]["timezone"], reports["same"]["locale"]) == ("Asia/Tokyo", "de-DE")


@pytest.mark.parametrize("leaves", ["closes", "navigates to another site"])
def test_popup_keeps_locale_and_timezone_when_its_opener_leaves(client: Lightcone, site: str, leaves: str) -> None:
    # Locale and timezone belong to the renderer process, held by the session of the opener
    # that the popup shares it with; when the opener leaves, the popup's session takes them.
    with client.computer.create(kind="browser", stealth={"timezone": "Asia/Tokyo", "locale": "de-DE"}) as session:
        assert session.navigate(f"{site}/stealth_opener.html").status == "success"
        opener = client.computers.tabs.list(session.id).result["tabs"][0]["tab_id"]
        assert session.click(*OPENERS["same"]).status == "success"
        assert wait_until(lambda: len(client.computers.tabs.list(session.id).result["tabs"]) == 2)
        popup = next(t["tab_id"] for t in client.computers.tabs.list(session.id).result["tabs"]
                     if t["tab_id"] != opener)
        if leaves == "closes":
            assert client.computers.tabs.delete(opener, id=session.id).status == "success"
        else:
            away = f"{site.replace('127.0.0.1', 'localhost')}/page2.html"
            assert client.computers.navigate(session.id, url=away, tab_id=opener).status == "success"

        def probed_again() -> bool:  # the popup's document, asked again after the opener left
            x, y = PROBE_AGAIN
            assert client.computers.click(session.id, x=x, y=y, tab_id=popup).status == "success"
            seen = _report(client, session.id, popup)
            return seen is not None and (seen["timezone"], seen["locale"]) == ("Asia/Tokyo", "de-DE")

        assert wait_until(probed_again, timeout=3)


def test_a_frame_from_another_site_has_every_override_in_its_first_script(client: Lightcone, site: str) -> None:
    # (an out-of-process iframe: a target of its own, attached through its page's session)
    stealth = {"timezone": "Asia/Tokyo", "locale": "de-DE"}
    with client.computer.create(kind="browser", stealth=stealth) as session:
        assert session.navigate(f"{site}/stealth_frame.html").status == "success"
        assert wait_until(lambda: _report(client, session.id) is not None), "the frame never reported"
        seen = _report(client, session.id)
    assert seen is not None
    _looks_like_desktop_chrome(seen)
    assert seen["ua_data_brands"] == ["Chromium", "Google Chrome", "Not=A?Brand"]
    assert (seen["timezone"], seen["locale"], seen["languages"]) == ("Asia/Tokyo", "de-DE", ["de-DE", "de"])
    assert seen["webdriver"] is False


def test_workers_report_what_the_page_reports(client: Lightcone, site: str) -> None:
    stealth = {"languages": ["fr-FR", "fr", "en"], "timezone": "Europe/Paris"}
    with client.computer.create(kind="browser", stealth=stealth) as session:
        assert session.navigate(f"{site}/stealth_workers.html").status == "success"
        assert wait_until(lambda: _report(client, session.id) is not None), "stealth_workers.html never reported"
        r = _report(client, session.id)
    assert r is not None
    page = r["page"]
    _looks_like_desktop_chrome(page)
    # dedicated workers wait for every override and the script; a service worker is let go by
    # Playwright, so its first script has what needs no script (the user agent the browser
    # started with, client hints, languages, timezone) and the script's part a moment later
    scopes = {"dedicated": r["dedicated"], "nested": r["dedicated"]["nested"], "service": r["service"],
              "service, later": r["service"]["now"]}
    for name, seen in scopes.items():
        if name != "service":
            _looks_like_desktop_chrome(seen)
        for key in ("user_agent", "ua_data_brands", "ua_data_platform", "languages", "timezone"):
            assert seen[key] == page[key], (name, key, seen[key], page[key])
    assert page["languages"] == ["fr-FR", "fr", "en"] and page["timezone"] == "Europe/Paris"


def test_disabled_popups_and_workers_keep_the_headless_values(client: Lightcone, site: str) -> None:
    with client.computer.create(kind="browser", stealth={"enabled": False}) as session:
        assert session.navigate(f"{site}/stealth_opener.html").status == "success"
        reports = {via: _popup(client, session, via) for via in ("same", "blank")}
        assert session.navigate(f"{site}/stealth_workers.html").status == "success"
        assert wait_until(lambda: _report(client, session.id) is not None)
        workers = _report(client, session.id)
    assert workers is not None
    for name, seen in [*reports.items(), ("dedicated", workers["dedicated"]), ("service", workers["service"])]:
        assert "HeadlessChrome/" in seen["user_agent"], name
        assert "SwiftShader" in (seen["webgl_renderer"] or ""), name
    assert reports["blank"]["webdriver"] is True  # (a new renderer: it waited for the override)
