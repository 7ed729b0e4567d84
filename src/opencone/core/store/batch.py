"""Rows inserted together: one transaction for every insert that arrives while one commits.

A burst of 32 creates on a full pool spent its time in 32 write transactions in
a row (a thread hop and a commit each: p95 ~200 ms on a loaded 2-core machine,
with the event loop idle). Here each insert waits only for the commit its row
is in; the rows that queued behind one commit go in the next, all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any


class Batcher:
    """Items written together: ``flush(session, items)`` runs once per transaction for every item that
    arrived while the previous one committed; ``add`` returns once its own item is committed (or raises
    what the commit raised)."""

    def __init__(self, transaction: Callable[[], AbstractAsyncContextManager[Any]],
                 flush: Callable[[Any, list[Any]], Awaitable[None]], *, skip_abandoned: bool = False) -> None:
        """``transaction()``: an async context manager giving a session in a transaction;
        ``skip_abandoned``: an item whose caller has given up (cancelled) is not written."""
        self._transaction = transaction
        self._flush = flush
        self._skip_abandoned = skip_abandoned
        self._pending: list[tuple[Any, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def add(self, item: Any) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            if self._skip_abandoned:
                batch = [(item, done) for item, done in batch if not done.done()]
            if not batch:
                continue
            try:
                async with self._transaction() as session:
                    await self._flush(session, [item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)


class BatchInserter(Batcher):
    """ORM rows inserted together (the creates' rows of a burst)."""

    def __init__(self, transaction: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        async def add_all(session: Any, rows: list[Any]) -> None:
            session.add_all(rows)

        super().__init__(transaction, add_all, skip_abandoned=True)  # (a create given up meanwhile)

    async def insert(self, row: Any) -> None:
        await self.add(row)


class BatchedWrites(Batcher):
    """One statement executed for many parameter sets in one transaction (the terminated rows of a
    wave of teardowns: core/teardowns.py)."""

    def __init__(self, statement: Any, transaction: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        async def executemany(session: Any, params: list[Any]) -> None:
            await session.execute(statement, params)

        super().__init__(transaction, executemany)

    async def write(self, params: dict[str, Any]) -> None:
        await self.add(params)


@contextlib.asynccontextmanager
async def write(lock: asyncio.Lock, sessions: Callable[[], Any]) -> AsyncIterator[Any]:
    """A session in a write transaction, one at a time under ``lock``."""
    async with lock, sessions() as s, s.begin():
        yield s
