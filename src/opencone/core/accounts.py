"""Organisations and API keys.

Keys are random 32-byte tokens; only their SHA-256 is stored (a key is not a
password a person picks, so a slow hash buys nothing). A known key's lookup is
cached for a minute, so an agent that pauses between steps does not pay a
database query on each call; an unknown key for a second. Every change of keys
(create, revoke, here or from the CLI in another process) touches a marker file
in the data dir, which each lookup checks (one stat): the cache is dropped
then, so a revoked key is refused at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.core.clock import Clock, SystemClock
from opencone.core.ids import new_id
from opencone.core.store.models import ApiKey, Organization

DEFAULT_ORG_ID = "org_default"
KEY_PREFIX = "oc_"
_CACHE_SECONDS = 60.0  # a key found valid
_MISS_CACHE_SECONDS = 1.0  # a key not found (it may be created from the CLI meanwhile)
# on PostgreSQL every key change is NOTIFY'd here in its own transaction: fleet replicas, which share no
# marker file, LISTEN and drop their caches (fleet/replica.py)
KEYS_CHANNEL = "opencone_keys"


async def _announce(session: Any) -> None:
    if session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:c, '')"), {"c": KEYS_CHANNEL})
KEYS_CHANGED = "keys.changed"  # the marker's name in the data dir


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    org_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class Accounts:
    def __init__(self, sessions: async_sessionmaker, clock: Clock | None = None,  # type: ignore[type-arg]
                 changes: Path | None = None) -> None:
        """``changes``: the marker file every process using these keys shares (``keys.changed`` in
        the data dir); without one, the cache lasts a second, as a change elsewhere is not seen."""
        self._sessions = sessions
        self._clock = clock or SystemClock()
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._changes = changes
        self._seen_change = self._change_mark()
        # a key found valid is cached a minute only where a change elsewhere is heard (the marker file,
        # or a replica's LISTEN on KEYS_CHANNEL), else a second
        self.changes_heard = changes is not None

    def _change_mark(self) -> int:
        if self._changes is None:
            return 0
        try:
            return self._changes.stat().st_mtime_ns
        except OSError:
            return 0

    def _changed(self) -> None:
        """Keys changed: drop this process's cache, and tell every other process (the server)."""
        self._cache.clear()
        if self._changes is not None:
            self._changes.parent.mkdir(parents=True, exist_ok=True)
            self._changes.write_text(secrets.token_hex(8))  # (a new mtime, even within the same tick)
            self._seen_change = self._change_mark()

    async def ensure_org(self, org_id: str = DEFAULT_ORG_ID, name: str = "default") -> str:
        async with self._sessions() as s, s.begin():
            if await s.get(Organization, org_id) is None:
                s.add(Organization(id=org_id, name=name, created_at=self._clock.now()))
        return org_id

    async def create_org(self, name: str) -> str:
        return await self.ensure_org(new_id("org"), name)

    async def create_key(self, org_id: str = DEFAULT_ORG_ID, name: str = "", key: str | None = None) -> str:
        """Store a key (a new random one unless given) and return it in clear, once."""
        if org_id == DEFAULT_ORG_ID:
            await self.ensure_org()
        key = key or generate_key()
        async with self._sessions() as s, s.begin():
            s.add(ApiKey(
                id=new_id("key"), org_id=org_id, name=name, key_hash=hash_key(key),
                prefix=key[:10], created_at=self._clock.now(),
            ))
            await _announce(s)
        self._changed()
        return key

    async def ensure_key(self, key: str, org_id: str = DEFAULT_ORG_ID, name: str = "bootstrap") -> bool:
        """Make ``key`` valid for ``org_id``; True when it had to be added."""
        await self.ensure_org(org_id)
        async with self._sessions() as s, s.begin():
            row = (await s.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))).scalar_one_or_none()
            added = row is None
            if row is not None:
                row.revoked_at = None
            else:
                s.add(ApiKey(
                    id=new_id("key"), org_id=org_id, name=name, key_hash=hash_key(key),
                    prefix=key[:10], created_at=self._clock.now(),
                ))
            await _announce(s)
        self._changed()
        return added

    async def has_keys(self) -> bool:
        async with self._sessions() as s:
            row = await s.execute(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1))
            return row.first() is not None

    async def list_keys(self) -> list[KeyInfo]:
        async with self._sessions() as s:
            rows = (await s.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars().all()
        return [KeyInfo(r.id, r.org_id, r.name, r.prefix, r.created_at, r.revoked_at) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        async with self._sessions() as s, s.begin():
            row = await s.get(ApiKey, key_id)
            if row is None:
                return False
            row.revoked_at = row.revoked_at or self._clock.now()
            await _announce(s)
        self._changed()
        return True

    def forget_cached(self) -> None:
        """A key changed somewhere else (a NOTIFY on KEYS_CHANNEL): look every key up again."""
        self._cache.clear()

    async def org_for_key(self, key: str) -> str | None:
        """The organisation a key belongs to, or None for an unknown or revoked key."""
        digest = hash_key(key)
        mark = self._change_mark()
        if mark != self._seen_change:  # keys changed in another process (the CLI)
            self._cache.clear()
            self._seen_change = mark
        hit = self._cache.get(digest)
        now = time.monotonic()
        ttl = _CACHE_SECONDS if hit is not None and hit[1] is not None and self.changes_heard else _MISS_CACHE_SECONDS
        if hit and now - hit[0] < ttl:
            return hit[1]
        async with self._sessions() as s:
            row = (await s.execute(
                select(ApiKey.org_id).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            )).first()
        org = row[0] if row else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, org)
        return org
