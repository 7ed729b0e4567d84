"""Organisations and API keys.

Keys are random 32-byte tokens; only their SHA-256 is stored (a key is not a
password a person picks, so a slow hash buys nothing). Lookups are cached for
a second so authentication stays off the hot path of every click, while a key
revoked from the CLI stops working within that second.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.core.clock import Clock, SystemClock
from opencone.core.ids import new_id
from opencone.core.store.models import ApiKey, Organization

DEFAULT_ORG_ID = "org_default"
KEY_PREFIX = "oc_"
_CACHE_SECONDS = 1.0


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
    def __init__(self, sessions: async_sessionmaker, clock: Clock | None = None) -> None:  # type: ignore[type-arg]
        self._sessions = sessions
        self._clock = clock or SystemClock()
        self._cache: dict[str, tuple[float, str | None]] = {}

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
        return key

    async def ensure_key(self, key: str, org_id: str = DEFAULT_ORG_ID, name: str = "bootstrap") -> bool:
        """Make ``key`` valid for ``org_id``; True when it had to be added."""
        await self.ensure_org(org_id)
        async with self._sessions() as s, s.begin():
            row = (await s.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))).scalar_one_or_none()
            if row is not None:
                row.revoked_at = None
                return False
            s.add(ApiKey(
                id=new_id("key"), org_id=org_id, name=name, key_hash=hash_key(key),
                prefix=key[:10], created_at=self._clock.now(),
            ))
            return True

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
        self._cache.clear()
        return True

    async def org_for_key(self, key: str) -> str | None:
        """The organisation a key belongs to, or None for an unknown or revoked key."""
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and now - hit[0] < _CACHE_SECONDS:
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
