"""Prefixed, unguessable identifiers (``comp_…``, ``key_…``)."""

from __future__ import annotations

import secrets


def new_id(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def new_token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
