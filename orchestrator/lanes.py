"""Per-conversation serial lanes under one global in-flight bound.

Turns of one conversation run strictly one after another, in submission order; different
conversations run concurrently. Every submitted item holds one slot of a :class:`Capacity` shared by
all partitions of the process until its handler returns; readers wait for a free slot before reading
more (backpressure: a full process stops reading instead of buffering without bound).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("sraq.lanes")


class Capacity:
    """In-flight items of the process, with a first-come-first-served wait for room (single event loop).

    ``used`` counts every held slot: items in the lanes plus slots *reserved* by readers for a read
    in progress. A reader reserves before it reads and at most the free slots, so readers of
    several partitions reading at once never get more entries between them than there is room for;
    each entry read takes over one reserved slot (:meth:`hand_over`), the rest go back
    (:meth:`release`).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.used = 0
        #: slots held for reads in progress (part of ``used``)
        self.reserved = 0
        #: the most items in flight at once so far (a gauge's high-water mark, for tests and ops)
        self.peak = 0
        #: slots reads waiting for entries may hold between them (the rest is for work at hand)
        self.wait_budget = limit // 2
        #: reads waiting for entries that hold a slot now
        self.waits = 0
        #: readers waiting for a free slot, first come first served (see :meth:`room`)
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def in_flight(self) -> int:
        """Items in the lanes (not counting reservations)."""
        return self.used - self.reserved

    @property
    def sleeping(self) -> int:
        """Readers waiting for room and not woken yet (with a slot free, only for an instant)."""
        return sum(1 for fut in self._waiters if not fut.done())

    def room(self) -> asyncio.Future[None]:
        """A future resolved once a slot is free for its holder, to await instead of polling.

        Waiters are woken first come, first served, as many as there are free slots: a slot given
        back wakes one reader, not every reader of every partition (each of which would find the slot
        taken and go back to waiting). A woken reader that does not read after all must call
        :meth:`pass_on`; cancel the future to stop waiting.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake()
        return fut

    def pass_on(self) -> None:
        """A woken waiter did not take the room: wake the next one instead."""
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.used
        waiters = self._waiters
        while free > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():  # (a cancelled waiter stays in the queue until it comes up)
                fut.set_result(None)
                free -= 1

    def take(self, n: int = 1) -> None:
        self.used += n
        self.peak = max(self.peak, self.in_flight)

    def give(self, n: int = 1) -> None:
        self.used -= n
        if self._waiters:
            self._wake()

    def may_hold_for_wait(self) -> bool:
        """Whether a read that first waits for entries may hold a slot (one) meanwhile: while such
        reads hold at most ``wait_budget`` slots. Idle partitions' reads must not take the room the
        busy ones need (with a bound below the partition count they would take all of it)."""
        return self.waits < self.wait_budget and self.used < self.limit

    def reserve(self, n: int, *, wait: bool = False) -> None:
        """Hold ``n`` slots for a read about to be sent (call with ``n <= free``, no await between);
        ``wait``: the read waits for entries first (:meth:`may_hold_for_wait`)."""
        self.reserved += n
        self.waits += wait
        self.take(n)

    def hand_over(self, n: int = 1) -> None:
        """``n`` reserved slots become items' (an entry read is queued in its lane)."""
        self.reserved -= n
        self.peak = max(self.peak, self.in_flight)

    def release(self, n: int, *, wait: bool = False) -> None:
        """``n`` reserved slots were not needed (the read got fewer entries, or some were dead
        letters); ``wait``: the read reserved with ``wait`` returned."""
        self.waits -= wait
        if n:
            self.reserved -= n
            self.give(n)


class Lanes(Generic[T]):
    """Serial lanes keyed by conversation id; ``handler`` processes one item at a time per key.

    A handler that raises ends its lane: the exception is logged, the lane's remaining items are
    dropped from memory (their stream entries stay pending and are re-read by the partition's next
    owner) and ``on_failure`` is called so the owner can stop the partition.
    """

    def __init__(
        self,
        name: str,
        capacity: Capacity,
        handler: Callable[[T], Awaitable[None]],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.handler = handler
        self.on_failure = on_failure
        self._queues: dict[str, deque[T]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        """Items submitted and not finished."""
        return sum(len(q) for q in self._queues.values())

    @property
    def active_lanes(self) -> int:
        return len(self._tasks)

    def submit(self, key: str, item: T, *, reserved: bool = False) -> None:
        """Queue ``item`` behind the earlier items of ``key``: it takes one capacity slot, or one the
        reader reserved for it (``reserved``: see :class:`Capacity`)."""
        if reserved:
            self.capacity.hand_over(1)
        else:
            self.capacity.take(1)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        if key not in self._tasks:
            self._idle.clear()
            self._tasks[key] = asyncio.create_task(self._run(key, queue), name=f"lane:{self.name}:{key}")

    async def _run(self, key: str, queue: deque[T]) -> None:
        try:
            while queue:
                try:
                    await self.handler(queue[0])
                finally:
                    queue.popleft()
                    self.capacity.give(1)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # surfaced, not swallowed: logged here and reported to the owner, which stops the partition
            log.error("lane_failed", lane=self.name, conversation_id=key, error=repr(exc), exc_info=exc)
            self.on_failure(exc)
        finally:
            if queue:  # cancelled or failed: the rest stays pending in Redis
                self.capacity.give(len(queue))
                queue.clear()
            self._queues.pop(key, None)
            self._tasks.pop(key, None)
            if not self._tasks:
                self._idle.set()

    async def drain(self, grace: float | None) -> bool:
        """Wait until every lane finished; False when ``grace`` seconds passed first."""
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races completion
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def cancel(self) -> None:
        """Cancel every lane now (uncommitted turns stay pending in their stream)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        # lanes that failed already reported through on_failure; cancelled ones have nothing to report
        await asyncio.gather(*tasks, return_exceptions=True)
