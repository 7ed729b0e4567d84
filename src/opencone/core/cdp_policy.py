"""What a CDP client may ask of a computer's browser.

A CDP client gets the whole DevTools protocol of its computer's own Chromium
(one process per computer, so every target in it belongs to that computer),
except what would end the computer or reach past it into the server:

- ``Browser.close`` is answered with success and not sent: a client closing
  "its" browser must not end the computer (Puppeteer's ``browser.close()``
  sends it; Playwright's only disconnects). ``Browser.crash*`` is refused.
- commands that open ports on the server or load code or files from its disk
  (``Tethering``, ``Target.setRemoteLocations``, ``Extensions``, ``PWA``,
  ``Target.exposeDevToolsProtocol``) are refused.
- URLs given to navigate or open targets must be web URLs: ``file://`` would
  read the server's files, other computers' profiles included.
- downloads go to the computer's own downloads directory whatever path the client
  names (``default`` behaviour too: it means that directory here), and
  ``DOM.setFileInputFiles`` may only pick files from there.
- a browser context may not bring its own proxy (``Target.createBrowserContext``
  with ``proxyServer``): every context goes through the computer's forwarder,
  so byte counts and ``change-proxy`` hold for all of its traffic.
- Chromium itself answers for a ``targetId`` or ``browserContextId`` it does not
  know; the proxy relabels that error to say the id is not part of this computer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SERVER_ERROR = -32000  # the code Chromium uses for a refused command

REFUSED_METHODS = {
    "Browser.crash": "would crash the computer's browser",
    "Browser.crashGpuProcess": "would crash the computer's browser",
    "Target.setRemoteLocations": "would make the browser reach outside this computer",
    "Target.exposeDevToolsProtocol": "would hand the browser's whole protocol to a page",
}
REFUSED_DOMAINS = {
    "Tethering": "would open a port on the server",
    "Extensions": "would load code from the server's disk",
    "PWA": "would install apps from outside this computer",
}
URL_PARAMS = {"Page.navigate": "url", "Target.createTarget": "url", "Network.loadNetworkResource": "url"}
WEB_SCHEMES = {"http", "https", "about", "data", "blob"}
DOWNLOAD_METHODS = {"Browser.setDownloadBehavior", "Page.setDownloadBehavior"}
# Every method the checks below look at contains one of these as written; a message whose text has
# none of them (and no backslash, with which JSON could spell a name in escapes) cannot be one of
# them, so it is forwarded without being parsed: most of the protocol's traffic, attach included.
_WATCHED = re.compile("|".join(re.escape(m) for m in sorted({
    "Browser.close", "Target.", "DOM.setFileInputFiles", *REFUSED_METHODS, *REFUSED_DOMAINS, *URL_PARAMS,
    *DOWNLOAD_METHODS})) + r"|\\")
_UNKNOWN_ID = re.compile(r"no target|not found|failed to find|no browser context|invalid.*context", re.I)


@dataclass(slots=True)
class Verdict:
    forward: str | bytes | None = None  # the message to send on to the browser (possibly rewritten)
    reply: str | None = None  # or the answer the proxy gives the client itself
    relabel: str | None = None  # the target or context id to name if the browser does not know it
    msg_id: Any = None  # with relabel: the command's id and session, to find the browser's answer
    session: str | None = None


def _answer(msg: dict[str, Any], body: dict[str, Any]) -> str:
    out: dict[str, Any] = {"id": msg.get("id"), **body}
    if "sessionId" in msg:
        out["sessionId"] = msg["sessionId"]
    return json.dumps(out)


def _error(msg: dict[str, Any], message: str) -> str:
    return _answer(msg, {"error": {"code": SERVER_ERROR, "message": message}})


def _is_web_url(url: Any) -> bool:
    if url is None:
        return True  # missing: Chromium reports the missing parameter itself
    if not isinstance(url, str):
        return False
    url = url.strip()
    return url == "" or urlsplit(url).scheme.lower() in WEB_SCHEMES


def _inside(path: Any, root: str, seen_as: str) -> bool:
    """Whether the browser's ``path`` is in the files dir: named under ``seen_as`` (the dir as the
    browser sees it), and still inside ``root`` (the server's side of it) with links resolved."""
    if not isinstance(path, str) or "\x00" in path:
        return False
    rel = os.path.relpath(os.path.normpath(path), seen_as) if os.path.isabs(path) else ".."
    if rel == "." or rel.startswith(".."):
        return False
    real = os.path.realpath(os.path.join(root, rel))  # symlinks and '..' resolved: no way out of the files dir
    return real.startswith(root + os.sep)


class CdpPolicy:
    def __init__(self, files_dir: str, host_files_dir: str | None = None) -> None:
        """``files_dir``: the computer's downloads dir as its browser sees it; ``host_files_dir``:
        the same dir on the server's side, when the browser's sandbox shows it elsewhere."""
        self.files_dir = files_dir if host_files_dir else os.path.realpath(files_dir)
        self.host_files_dir = os.path.realpath(host_files_dir or files_dir)

    def check(self, raw: str | bytes) -> Verdict:
        """Decide what to do with one client → browser message."""
        if isinstance(raw, str) and _WATCHED.search(raw) is None:
            return Verdict(forward=raw)
        try:
            msg = json.loads(raw)
        except ValueError:
            return Verdict(forward=raw)  # Chromium answers malformed JSON itself
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            return Verdict(forward=raw)
        method: str = msg["method"]
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        if method == "Browser.close":
            return Verdict(reply=_answer(msg, {"result": {}}))
        why = REFUSED_METHODS.get(method) or REFUSED_DOMAINS.get(method.partition(".")[0])
        if why:
            return Verdict(reply=_error(msg, f"{method} is not allowed on an opencone computer: it {why}"))
        key = URL_PARAMS.get(method)
        if key and not _is_web_url(params.get(key)):
            schemes = ", ".join(sorted(WEB_SCHEMES))
            return Verdict(reply=_error(
                msg, f"{method}: only {schemes} URLs are allowed; got {str(params.get(key))[:100]!r}"))
        if method in DOWNLOAD_METHODS and ("downloadPath" in params or params.get("behavior") == "default"):
            behavior = "allow" if params.get("behavior") == "default" else params.get("behavior")
            # the server's disk stays out of reach; the download lands with the computer's others
            msg["params"] = {**params, "behavior": behavior, "downloadPath": self.files_dir}
            return Verdict(forward=json.dumps(msg))
        if method == "Target.createBrowserContext" and ("proxyServer" in params or "proxyBypassList" in params):
            return Verdict(reply=_error(
                msg, "Target.createBrowserContext: a context may not set its own proxyServer on an opencone "
                     "computer: every context goes through the computer's proxy; create the context without "
                     "one and route the computer with POST /computers/{id}/change-proxy"))
        if method == "DOM.setFileInputFiles":
            files = params.get("files")
            if not isinstance(files, list) or not all(_inside(f, self.host_files_dir, self.files_dir) for f in files):
                return Verdict(reply=_error(
                    msg, "DOM.setFileInputFiles may only pick files the computer downloaded; "
                         "send file contents instead (Playwright does for a remote browser)"))
        if method.startswith("Target."):
            ident = params.get("targetId") or params.get("browserContextId")
            if isinstance(ident, str):
                return Verdict(forward=raw, relabel=ident, msg_id=msg.get("id"), session=msg.get("sessionId"))
        return Verdict(forward=raw)


def relabel_error(raw: str | bytes, ident: str) -> str | bytes:
    """Chromium's "no such target" answer, reworded: that id is not part of this computer."""
    try:
        msg = json.loads(raw)
    except ValueError:
        return raw
    err = msg.get("error") if isinstance(msg, dict) else None
    if not isinstance(err, dict) or not _UNKNOWN_ID.search(str(err.get("message", ""))):
        return raw
    err["message"] = f"{ident} is not part of this computer ({err.get('message')})"
    err["code"] = SERVER_ERROR
    return json.dumps(msg)
