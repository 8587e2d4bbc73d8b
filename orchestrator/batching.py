"""Coalesce the ledger round trips of concurrent lanes into pipelines.

Every lane needs two round trips per turn (snapshot, commit). Issued one by one, each costs a
socket write, a read and an event-loop wake-up; under load that, not Redis, bounds throughput.
:class:`Coalescer` queues the requests made during one event-loop iteration and sends them as one
pipeline (each snapshot and each apply stays atomic on its own: one Lua script each). When a
pipeline's replies arrive, all its lanes wake in the same iteration and their next requests
coalesce again, so batches form by themselves under load; a lone turn waits for nothing but the
next iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Generic, TypeVar

import structlog

from ledger import ApplyCall, ApplyResult, Ledger, LedgerSnapshot

Req = TypeVar("Req")
Res = TypeVar("Res")
log = structlog.get_logger("sraq.batching")


class _Batcher(Generic[Req, Res]):
    """Queues requests and flushes them with ``run(batch)`` at the end of the loop iteration."""

    def __init__(self, name: str, run: Callable[[list[Req]], Awaitable[Sequence[Res | Exception]]], limit: int):
        self.name = name
        self.run = run
        self.limit = limit
        self._queue: list[tuple[Req, asyncio.Future[Res]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, request: Req) -> Res:
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        if len(self._queue) == 1:
            # the task's first step runs next iteration and takes everything queued by then: the
            # same batches as flushing at the end of this iteration, one event-loop hop sooner
            self._spawn(self._run_queued())
        elif len(self._queue) >= self.limit:
            self._spawn(self._execute_live(self._take()))
        return await fut

    def _take(self) -> list[tuple[Req, asyncio.Future[Res]]]:
        batch, self._queue = self._queue, []
        return [(r, f) for r, f in batch if not f.done()]  # waiters cancelled meanwhile are dropped

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro, name=f"coalesce:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_queued(self) -> None:
        await self._execute_live(self._take())  # empty when a full batch already went

    async def _execute_live(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        if batch:
            await self._execute(batch)

    async def _execute(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self.run([r for r, _ in batch])
        except BaseException as exc:
            # the whole round trip failed (connection lost, ...): every waiter sees the error and
            # retries on its own; the exception is delivered to them, not swallowed
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)


class Coalescer:
    """Pipelined ``snapshot``/``apply`` over a :class:`Ledger` (same results and errors as the
    ledger's own methods)."""

    def __init__(self, ledger: Ledger, limit: int = 256) -> None:
        self.ledger = ledger
        self._snapshots: _Batcher[str, LedgerSnapshot] = _Batcher("snapshots", self._snapshot_many, limit)
        self._applies: _Batcher[ApplyCall, ApplyResult] = _Batcher("applies", ledger.apply_many, limit)

    async def _snapshot_many(self, conversations: list[str]) -> list[LedgerSnapshot | Exception]:
        return list(await self.ledger.snapshot_many(conversations))

    async def snapshot(self, conversation_id: str) -> LedgerSnapshot:
        return await self._snapshots.submit(conversation_id)

    async def apply(self, call: ApplyCall) -> ApplyResult:
        return await self._applies.submit(call)

    @property
    def mean_batch(self) -> float:
        b = self._snapshots.batches + self._applies.batches
        return (self._snapshots.items + self._applies.items) / b if b else 0.0
