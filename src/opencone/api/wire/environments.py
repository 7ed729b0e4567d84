"""Saved environments on the wire, in the ComputerResponse shape (``GET /computers?type=persistent``)."""

from __future__ import annotations

from typing import Any

from opencone.core.clock import iso


def environment_response(env: dict[str, Any]) -> dict[str, Any]:
    """A saved environment: ``status`` "saved", its times and size; no endpoints (nothing runs)."""
    return {
        "id": env["id"],
        "kind": env["kind"],
        "status": env["status"],
        "created_at": iso(env["created_at"]),
        "saved_at": iso(env["saved_at"]),
        "size_bytes": env["size_bytes"],
        "persistent": True,
        "environment_id": env["id"],
        "context_id": env["context_id"],
        "saved_by": env["saved_by"],
        "last_error": env["last_error"],
        "endpoints": {},
    }
