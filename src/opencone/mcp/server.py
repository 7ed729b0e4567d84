"""The MCP server object: the official SDK's ``MCPServer`` with opencone's tools on it."""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer

from opencone import __version__
from opencone.mcp.tools import Backend, register

INSTRUCTIONS = """\
opencone computers: isolated Chromium browsers and X11 desktops.
Start with computer_create (it returns a computer_id; every other tool takes it) and end with computer_close.
See a page with snapshot (elements with [ref=eN]) or screenshot (a JPEG; its scale is stated).
Act by ref (click, type, fill, select_option, scroll, drag) or by x,y in pixels of the last screenshot image.
A failed action comes back as an error saying what to do (e.g. take a new snapshot when a ref is stale)."""


def build(backend: Backend, **kw: Any) -> MCPServer:
    """``kw``: the SDK's auth arguments (``token_verifier``, ``auth``) for the HTTP mount; none for stdio."""
    server: MCPServer = MCPServer("opencone", version=__version__, instructions=INSTRUCTIONS,
                                  website_url="https://github.com/opencone", **kw)
    register(server, backend)
    return server
