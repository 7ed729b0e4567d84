"""The responses table (core/store/models.py ``ResponseRecord``), always read by organisation.

A response of another organisation is no response at all (404), as computers are.
``context`` walks a ``previous_response_id`` chain back to its start and hands back
its items in order: each response's input, then its output.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from opencone.core.store.models import ResponseRecord
from opencone.gateway.errors import InvalidRequest, NotFound

MAX_CHAIN = 10_000  # responses walked back through previous_response_id (a loop is refused, not followed)


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"no response {response_id!r}: unknown, deleted, made with store: false, or another "
                    "organisation's", param=param, code="response_not_found")


class ResponseStore:
    def __init__(self, sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
        self.sessions = sessions

    async def add(self, record: ResponseRecord) -> None:
        async with self.sessions() as session, session.begin():
            await session.merge(record)

    async def finish(self, response_id: str, status: str, response: dict[str, Any],
                     events: list[dict[str, Any]]) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(ResponseRecord).where(ResponseRecord.id == response_id).values(
                status=status, response=response, events=events, completed_at=datetime.now(UTC)))

    async def get(self, org: str, response_id: str) -> ResponseRecord | None:
        async with self.sessions() as session:
            record = await session.get(ResponseRecord, response_id)
        return record if record is not None and record.org_id == org else None

    async def delete(self, org: str, response_id: str) -> bool:
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                delete(ResponseRecord).where(ResponseRecord.id == response_id, ResponseRecord.org_id == org))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def context(self, org: str, previous_id: str) -> tuple[ResponseRecord, list[dict[str, Any]]]:
        """The response ``previous_id`` names, and the items of its whole chain, oldest first."""
        chain: list[ResponseRecord] = []
        seen: set[str] = set()
        next_id: str | None = previous_id
        async with self.sessions() as session:
            while next_id is not None:
                record = await session.get(ResponseRecord, next_id)
                if record is None or record.org_id != org:
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
        return head, items

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
