"""The one error of the proxy package: a route that could not be opened."""

from __future__ import annotations


class UpstreamError(Exception):
    """The route to the destination could not be opened; the message says why, for a person.

    ``code`` is the Chromium net error a browser without this proxy would have shown
    (ERR_CONNECTION_REFUSED…), or a proxy one (ERR_PROXY_CONNECTION_FAILED…), so the
    driver can report the same code as before the forwarder existed.
    """

    def __init__(self, message: str, code: str = "ERR_TUNNEL_CONNECTION_FAILED") -> None:
        super().__init__(message)
        self.code = code
