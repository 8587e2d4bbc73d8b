"""What a task handler receives: :class:`TaskContext` (ids, explanation, attempt, updates, progress)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from redis.asyncio import Redis

from workers.config import WorkerConfig
from workers.events import EventReporter


class PermanentTaskError(Exception):
    """Raised by a handler for a failure that retrying cannot fix (bad configuration, invalid task):
    the task is reported ``failed`` at once instead of after ``max_tries`` runs."""


class TaskUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One ``update_task`` decision delivered to the task (in ledger order)."""

    text: str
    turn_id: str
    ledger_version: int
    entry_id: str


def update_fields(text: str, turn_id: str, ledger_version: int) -> dict[str, str | int]:
    """Stream fields of an update entry (written by the dispatcher, read by :class:`UpdateFeed`)."""
    return {"text": text, "turn": turn_id, "lv": ledger_version}


def _update(entry_id: bytes, fields: dict[bytes, bytes]) -> TaskUpdate:
    return TaskUpdate(
        text=fields.get(b"text", b"").decode("utf-8"),
        turn_id=fields.get(b"turn", b"").decode("utf-8"),
        ledger_version=int(fields.get(b"lv", b"0") or 0),
        entry_id=entry_id.decode(),
    )


class UpdateFeed:
    """Reads a task's update stream from the beginning: a re-run sees every update of the task.

    :meth:`poll` returns what arrived since the last read without waiting; iterating waits for the
    next update (``XREAD BLOCK``, re-armed every ``block_ms`` so cancellation is prompt).
    """

    def __init__(self, redis: Redis, stream: str, *, block_ms: int = 1000) -> None:
        self.redis = redis
        self.stream = stream
        self.block_ms = block_ms
        self.last_id = "0-0"

    async def _read(self, block: int | None) -> list[TaskUpdate]:
        reply = await self.redis.xread({self.stream: self.last_id}, count=100, block=block)
        out: list[TaskUpdate] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append(_update(entry_id, fields))
                self.last_id = entry_id.decode()
        return out

    async def poll(self) -> list[TaskUpdate]:
        return await self._read(None)

    async def __aiter__(self) -> AsyncIterator[TaskUpdate]:
        while True:
            for update in await self._read(self.block_ms):
                yield update


@dataclass(slots=True)
class TaskContext:
    """The handler's view of one run of a task.

    * ``explanation``: the task summary from the ``start_task`` decision;
    * ``attempt``: 1 for the first run, +1 for every re-run of the task (retry, worker crash, re-dispatch);
      events carry it so the ledger refuses late results of superseded runs;
    * ``updates()``: async iterator over ``update_task`` texts (waits); ``poll_updates()`` does not wait;
    * ``progress(text)``: publish a ``progress`` event (a task-event turn);
    * cancellation arrives as ``asyncio.CancelledError`` at the handler's next ``await``.
    """

    conversation_id: str
    task_id: str
    explanation: str
    attempt: int
    job_id: str
    job_try: int
    config: WorkerConfig
    feed: UpdateFeed
    events: EventReporter
    seen_updates: list[TaskUpdate] = field(default_factory=list)

    async def progress(self, text: str) -> None:
        await self.events.progress(text)

    async def poll_updates(self) -> list[TaskUpdate]:
        """Updates that arrived since the last read (possibly none); never waits."""
        new = await self.feed.poll()
        self.seen_updates.extend(new)
        return new

    async def updates(self) -> AsyncIterator[TaskUpdate]:
        """Every update of the task, waiting for the next one; ends only when the run is cancelled."""
        async for update in self.feed:
            self.seen_updates.append(update)
            yield update
