"""Computers as MCP tools: ``/mcp`` on the server (Streamable HTTP) and ``opencone mcp`` (stdio).

Needs the optional extra ``opencone[mcp]`` (the official ``mcp`` SDK, v2 line); ``http.install``
mounts a JSON refusal at ``/mcp`` when it is missing. Nothing here imports the SDK at import time.
"""

from __future__ import annotations

import importlib.util


def sdk_available() -> bool:
    """Whether the official ``mcp`` SDK (the v2 line, with ``MCPServer``) can be imported."""
    try:
        if importlib.util.find_spec("mcp") is None:
            return False
        from mcp.server import MCPServer  # noqa: F401
    except ImportError:
        return False
    return True
