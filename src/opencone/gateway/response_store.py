"""The responses table (core/store/models.py ``ResponseRecord``), always read by organisation.

A response of another organisation is no response at all (404), as computers are.
``context`` walks a ``previous_response_id`` chain back to its start and hands back
its items in order: each response's input, then its output.

Rows are written behind: ``put`` keeps the record in memory, where every read finds
it at once, and a writer task stores what was put in one transaction a moment
later (``hold``), as plain INSERTs and UPDATEs (the ORM's ``merge`` costs a row
1 ms, an INSERT of a batch a tenth of that). A row written in the request cost a
response 2.5 ms (measured on SQLite under load, through aiosqlite's thread), more
than the rest of the gateway; out of the request's way it costs nothing there. A server
killed within ``hold`` of a response loses that row, as it loses the response
being made. A background response's first row is written at once (``add``), so
that a crash while it runs is said at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.core.store.models import ResponseRecord
from opencone.gateway.errors import InvalidRequest, NotFound

log = logging.getLogger(__name__)

_COLUMNS = [c.key for c in ResponseRecord.__table__.columns]
MAX_CHAIN = 10_000  # responses walked back through previous_response_id (a loop is refused, not followed)


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"no response {response_id!r}: unknown, deleted, made with store: false, or another "
                    "organisation's", param=param, code="response_not_found")


class ResponseStore:
    def __init__(self, sessions: async_sessionmaker, hold: float = 0.05) -> None:  # type: ignore[type-arg]
        self.sessions = sessions
        self.hold = hold
        # id -> (its put's number, the record, whether it has no row yet)
        self._pending: dict[str, tuple[int, ResponseRecord, bool]] = {}
        self._puts = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # a delete waits for a batch being written

    # -- writing ---------------------------------------------------------------------------
    def put(self, record: ResponseRecord, new: bool = True) -> None:
        """Keep ``record`` (``new``: it has no row yet; else its row changed); stored a moment later."""
        self._puts += 1
        before = self._pending.get(record.id)
        self._pending[record.id] = (self._puts, record, new or (before is not None and before[2]))
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_forever())

    async def add(self, record: ResponseRecord) -> None:
        """Store a new ``record`` now."""
        async with self.sessions() as session, session.begin():
            await session.execute(insert(ResponseRecord), [_row(record)])

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.hold)  # let a batch gather
            await self.flush()

    async def flush(self) -> None:
        async with self._writing:
            batch = list(self._pending.items())
            if not batch:
                return
            new = [_row(record) for _, (_, record, fresh) in batch if fresh]
            changed = [_row(record) for _, (_, record, fresh) in batch if not fresh]
            try:
                async with self.sessions() as session, session.begin():
                    if new:
                        await session.execute(insert(ResponseRecord), new)
                    for row in changed:
                        await session.execute(update(ResponseRecord).where(ResponseRecord.id == row["id"])
                                              .values(**row))
            except IntegrityError:  # a row already there (an id an upstream gave twice): one by one
                await self._one_by_one([record for _, (_, record, _) in batch])
            except Exception:  # the database is away: kept, and tried again with the next batch
                log.exception("could not store %d responses", len(batch))
                return
            self._done(batch)

    async def _one_by_one(self, records: list[ResponseRecord]) -> None:
        for record in records:
            try:
                async with self.sessions() as session, session.begin():
                    existing = await session.get(ResponseRecord, record.id)
                    if existing is not None and existing.org_id != record.org_id:
                        log.warning("response %s is another organisation's already; not noted", record.id)
                        continue
                    await session.merge(record)
            except Exception:
                log.exception("could not store response %s", record.id)

    def _done(self, batch: list[tuple[str, tuple[int, ResponseRecord, bool]]]) -> None:
        for response_id, (number, _, _) in batch:
            if self._pending.get(response_id, (None,))[0] == number:  # not put again meanwhile
                del self._pending[response_id]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.flush()

    # -- reading -----------------------------------------------------------------------------
    async def get(self, org: str, response_id: str) -> ResponseRecord | None:
        pending = self._pending.get(response_id)
        if pending is not None:
            record: ResponseRecord | None = pending[1]
        else:
            async with self.sessions() as session:
                record = await session.get(ResponseRecord, response_id)
        return record if record is not None and record.org_id == org else None

    async def delete(self, org: str, response_id: str) -> bool:
        async with self._writing:
            pending = self._pending.get(response_id)
            if pending is not None and pending[1].org_id == org:
                del self._pending[response_id]
            async with self.sessions() as session, session.begin():
                result = await session.execute(
                    delete(ResponseRecord).where(ResponseRecord.id == response_id, ResponseRecord.org_id == org))
        return bool(result.rowcount) or pending is not None  # type: ignore[attr-defined]

    async def context(self, org: str, previous_id: str) -> tuple[list[ResponseRecord], list[dict[str, Any]]]:
        """The responses of the chain ``previous_id`` ends (newest first), and their items, oldest first."""
        chain: list[ResponseRecord] = []
        seen: set[str] = set()
        next_id: str | None = previous_id
        while next_id is not None:
            record = await self.get(org, next_id)
            if record is None:
                raise not_found(next_id, "previous_response_id")
            if record.mode != "emulated":
                raise InvalidRequest(f"response {next_id} is held by its upstream ({record.model}); continue "
                                     f"it with a model of that upstream", param="previous_response_id")
            if next_id in seen or len(chain) >= MAX_CHAIN:
                raise InvalidRequest("the previous_response_id chain is too long or loops",
                                     param="previous_response_id")
            seen.add(next_id)
            chain.append(record)
            next_id = record.previous_response_id
        head = chain[0]
        if head.status in ("queued", "in_progress"):
            raise InvalidRequest(f"response {previous_id} is still {head.status}; wait for it to finish",
                                 param="previous_response_id")
        items: list[dict[str, Any]] = []
        for record in reversed(chain):
            items.extend(record.input_items)
            items.extend(record.response.get("output") or [])
        return chain, items

    async def fail_unfinished(self, reason: str) -> int:
        """At start: responses left running by a server that stopped are failed, saying why."""
        async with self.sessions() as session, session.begin():
            rows = (await session.execute(select(ResponseRecord).where(
                ResponseRecord.mode == "emulated", ResponseRecord.status.in_(("queued", "in_progress"))))).scalars()
            count = 0
            for record in rows:
                record.status = "failed"
                record.response = {**record.response, "status": "failed",
                                   "error": {"code": "server_error", "message": reason}}
                record.completed_at = datetime.now(UTC)
                count += 1
        return count


def _row(record: ResponseRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _COLUMNS}
