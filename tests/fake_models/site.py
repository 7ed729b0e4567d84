"""A web site for agent tests that also records what the agent form submitted.

It serves ``tests/pages`` as the suite's ``Site`` does, and answers the form's
``GET /agent_form_submit?value=…`` with 204, keeping the value: a test can then assert what
the browser sent, from outside both the model and opencone.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

PAGES = Path(__file__).resolve().parent.parent / "pages"


class _Handler(http.server.SimpleHTTPRequestHandler):
    site: FormSite

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/agent_form_submit":
            values = urllib.parse.parse_qs(url.query, keep_blank_values=True).get("value", [""])
            self.site._record(values[0])
            self.send_response(204)
            self.send_header("cache-control", "no-store")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


class FormSite:
    """Serve ``root`` on 127.0.0.1 from a daemon thread; ``submissions()`` lists the values the
    agent form sent, oldest first."""

    def __init__(self, root: Path = PAGES) -> None:
        handler = type("Handler", (_Handler,), {"site": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(handler, directory=str(root)))
        self._lock = threading.Lock()
        self._submissions: list[str] = []
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def form_url(self) -> str:
        return f"{self.url}/agent_form.html"

    def _record(self, value: str) -> None:
        with self._lock:
            self._submissions.append(value)

    def submissions(self) -> list[str]:
        with self._lock:
            return list(self._submissions)

    def wait_for_submission(self, timeout: float = 10.0) -> list[str]:
        """The submissions, once there is at least one (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.submissions():
            time.sleep(0.05)
        return self.submissions()

    def clear(self) -> None:
        with self._lock:
            self._submissions.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
