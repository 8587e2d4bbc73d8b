"""The outbox relay: ledger outbox entries -> arq jobs, each acknowledged only with or after its effect.

The ledger commit appends ``start`` / ``update`` / ``cancel`` entries (fields ``kind conv task attempt
text turn lv``) to the partition's outbox stream in the same atomic step as the ledger change. One
:class:`Dispatcher` consumes the outbox of every partition it is given with the consumer group
``dispatcher``, one loop per partition, entries in stream order:

* ``start``  -> an arq job ``run_task`` with id ``<prefix>:<conv>:<task>:<attempt>``, enqueued as arq's
  ``enqueue_job`` does (``workers.queue.enqueue_and_record``); skipped when the ledger already closed
  the task (e.g. cancelled before the relay got to it);
* ``update`` -> appended to the task's update stream (entry id = outbox entry id, so a redelivered
  entry is not delivered twice), where the running handler reads it; if the task is open but its job
  is neither queued nor running, the task is re-dispatched as ``...:<task>:<n+1>``;
* ``cancel`` -> arq abort of the task's current job (queued or running): the handler gets
  ``CancelledError`` within one worker poll delay.

Two ways in. A relay hosted in the orchestrator (``fed=True``) is handed the entries by the commits
themselves: the ledger's apply reads its new outbox entries for the relay's consumer in the same
atomic step (``ApplyCall.relay``) and the orchestrator passes them to :meth:`Dispatcher.deliver`, so
the relay has no blocking read of its own (that read cost a round trip, a wake-up and a re-armed
``XREADGROUP`` per entry). It still reads, without blocking: its own pending entries when it starts
or after an error, and every ``block_ms`` any entry no commit handed over (one written before the
group existed, or by a process that does not host this relay). Entries of one conversation reach it
in commit order (the orchestrator commits a conversation's turns one after the other). A standalone
relay (``sraq dispatcher``) reads with a blocking ``XREADGROUP``.

Exactly once, by construction: an entry is XACKed only with or after its effect (a start's enqueue and
its acknowledgement are one atomic step), so a relay that dies between the ledger commit and the
enqueue leaves the entry unread or pending; the next relay (or the same consumer after a restart, or
any consumer after ``claim_idle_ms`` via XAUTOCLAIM) processes it again, and the deterministic job id
makes the second enqueue a no-op. Runs in ``sraq dispatcher``
or inside the orchestrator process for the partitions it owns (:meth:`Dispatcher.set_partitions`).

Cost: the relay's CPU is mostly Redis round trips (tens of microseconds of client CPU each), so each
kind uses as few as its ordering allows (:mod:`workers.outbox_effects`), and each partition loop
holds one connection for its own commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ledger import Keys, Ledger, OutboxRecord, Relay
from ledger.streams import group_row, trim_bound
from workers.outbox_effects import GROUP, MalformedEntry, OutboxConn, OutboxEffects, parse_entry

#: Phases the relay loops' periodic work is spread over (see :func:`next_due`).
PHASES = 16


def next_due(now: float, start: float, every: float, partition: int) -> float:
    """When a relay loop started at ``start`` next does a periodic job (claim and trim, or a poll):
    the first time after ``now`` on the grid ``start + every * (k + phase)``, the phase set by the
    partition (``partition % PHASES / PHASES``).

    The loops of all owned partitions start together; on one grid they would claim, trim and poll in
    the same millisecond, a burst of 2-3 round trips per partition that the turns read and committed
    then wait behind. A fixed grid, not "now + every": the phases do not drift back together.
    """
    phase = (partition % PHASES) / PHASES
    return start + every * (math.floor((now - start) / every - phase) + 1 + phase)


__all__ = ["GROUP", "Dispatcher", "MalformedEntry", "parse_entry"]

log = structlog.get_logger("sraq.workers.dispatcher")


@dataclass(slots=True)
class _Inbox:
    """The entries commits handed to one partition's fed relay loop, in the order they came."""

    entries: deque[OutboxRecord] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, entries: Iterable[OutboxRecord]) -> None:
        self.entries.extend(entries)
        self.ready.set()

    def take(self) -> list[OutboxRecord]:
        out = list(self.entries)
        self.entries.clear()
        self.ready.clear()
        return out


class Dispatcher:
    """Relay of the outboxes of a set of partitions into the arq queue. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        pool: ArqRedis,
        keys: Keys,
        *,
        consumer: str,
        partitions: Iterable[int] | None = None,
        block_ms: int = 1000,
        claim_idle_ms: int = 5000,
        grace_s: float = 2.0,
        keep_result_s: float = 86_400.0,
        fed: bool = False,
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.consumer = consumer
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.grace_s = grace_s
        self.stats: Counter[str] = Counter()
        #: hosted: commits hand the entries over (:meth:`deliver`); no blocking read
        self.fed = fed
        #: the consumer commits read the outbox entries for, when this relay is fed
        self.relay = Relay(GROUP, consumer)
        self._inboxes: dict[int, _Inbox] = {}
        self._wanted = set(range(keys.partitions) if partitions is None else partitions)
        self._loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.effects = OutboxEffects(pool, keys, self.stats, keep_result_s=keep_result_s)
        self._started = False
        #: set when a relay loop died of an unexpected error (``error`` says which); hosts should stop
        self.failed = asyncio.Event()
        self.error: BaseException | None = None

    @property
    def partitions(self) -> set[int]:
        return set(self._loops)

    def deliver(self, partition: int, entries: list[OutboxRecord]) -> None:
        """Entries a commit read for this relay (``ApplyResult.delivered``), for ``partition``'s loop.

        Without a running loop for the partition they are left where they are: in this consumer's
        pending list, which a starting loop reads first (or another relay claims once idle).
        """
        inbox = self._inboxes.get(partition)
        if inbox is not None:
            inbox.put(entries)
            self.stats["fed"] += len(entries)

    async def start(self) -> None:
        """Create the consumer groups and start one relay loop per partition."""
        self._started = True
        await self.set_partitions(self._wanted)

    async def set_partitions(self, partitions: Iterable[int]) -> None:
        """Relay exactly these partitions from now on (the orchestrator calls this when leases change).

        Returns promptly: a dropped partition's loop finishes its current entry in the background.
        """
        self._wanted = set(partitions)
        if not self._started:
            return
        for p in sorted(set(self._loops) - self._wanted):
            self._retire(p)
        for p in sorted(self._wanted - set(self._loops)):
            outbox = self.keys.partition(p).outbox
            with contextlib.suppress(ResponseError):  # BUSYGROUP: exists already
                await self.pool.xgroup_create(outbox, GROUP, id="0", mkstream=True)
            stopping = asyncio.Event()
            if self.fed:
                self._inboxes[p] = _Inbox()
            task = asyncio.create_task(self._run(p, stopping), name=f"dispatcher-p{p}")
            task.add_done_callback(self._loop_done)
            self._loops[p] = (task, stopping)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.error = task.exception()
        log.error("dispatcher_loop_failed", task=task.get_name(), error=repr(self.error), exc_info=self.error)
        self.failed.set()

    async def stop(self) -> None:
        """Stop reading, let the entries in hand finish (``grace_s``), then cancel. Idempotent."""
        self._started = False
        for p in list(self._loops):
            self._retire(p)
        await asyncio.gather(*list(self._retiring))

    def _retire(self, p: int) -> None:
        task, stopping = self._loops.pop(p)
        stopping.set()
        inbox = self._inboxes.pop(p, None)
        if inbox is not None:
            inbox.ready.set()  # wakes the loop, which sees ``stopping``
        finisher = asyncio.create_task(self._finish(task), name=f"dispatcher-retire-p{p}")
        self._retiring.add(finisher)
        finisher.add_done_callback(self._retiring.discard)

    async def _finish(self, task: asyncio.Task[None]) -> None:
        done, _ = await asyncio.wait({task}, timeout=self.grace_s)
        if not done:
            task.cancel()
        # a loop that died was logged and surfaced through ``failed``/``error`` by _loop_done
        await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ loop

    async def _run(self, p: int, stopping: asyncio.Event) -> None:
        held = Redis(connection_pool=self.pool.connection_pool, single_connection_client=True)
        ob = OutboxConn(p, self.keys.partition(p).outbox, held, Ledger(held, self.keys))
        inbox = self._inboxes.get(p)
        try:
            await (self._relay(ob, stopping) if inbox is None else self._relay_fed(ob, stopping, inbox))
        finally:
            await ob.conn.aclose()  # the held connection goes back to the pool

    async def _relay(self, ob: OutboxConn, stopping: asyncio.Event) -> None:
        backoff = 0.05
        last_id = "0"  # first our own pending entries (a restart with the same consumer name) ...
        claim_due = 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not stopping.is_set():
            try:
                if (now := loop.time()) >= claim_due:  # ... and entries of relays that died holding them
                    claim_due = next_due(now, start, self.claim_idle_ms / 2000, ob.partition)
                    await self._claim(ob)
                    await self._trim(ob)
                block = None if last_id == "0" else self.block_ms
                reply = await ob.conn.xreadgroup(GROUP, self.consumer, {ob.stream: last_id}, count=100, block=block)
                entries = reply[0][1] if reply else []
                if last_id == "0" and not entries:
                    last_id = ">"
                for entry_id, fields in entries:
                    await self._handle(ob, entry_id, fields)
                    if stopping.is_set():
                        break
                backoff = 0.05
            except (RedisError, OSError) as exc:
                backoff = await self._recover(ob, exc, backoff)
                last_id = "0"  # whatever we held is still pending: go through it again

    async def _relay_fed(self, ob: OutboxConn, stopping: asyncio.Event, inbox: _Inbox) -> None:
        """The loop of a fed relay: the entries commits hand over, and non-blocking reads for the rest."""
        backoff = 0.05
        loop = asyncio.get_running_loop()
        claim_due = poll_due = 0.0  # both at once at the start, then spread (next_due)
        start = loop.time()
        rescan = True
        scanned: set[bytes] = set()
        while not stopping.is_set():
            try:
                now = loop.time()
                if now >= claim_due:  # entries of relays that died holding them
                    claim_due = next_due(now, start, self.claim_idle_ms / 2000, ob.partition)
                    await self._claim(ob)
                    await self._trim(ob)
                if rescan:
                    # what the inbox holds is in our pending list too: read it there, in stream order;
                    # a commit that raced this read may hand some of it over again (``scanned``)
                    inbox.take()
                    scanned = await self._read_through(ob, "0", stopping)
                    rescan = False
                if now >= poll_due:  # entries no commit handed over
                    poll_due = next_due(now, start, self.block_ms / 1000, ob.partition)
                    await self._read_through(ob, ">", stopping)
                if not inbox.entries:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, min(poll_due, claim_due) - loop.time())):
                            await inbox.ready.wait()
                await self._handle_all(ob, inbox.take(), scanned)
                backoff = 0.05
            except (RedisError, OSError) as exc:
                backoff = await self._recover(ob, exc, backoff)
                rescan = True  # whatever we held is still pending: go through it again
        # stopping: what commits handed over is in hand, as a standalone relay's last batch is; it is
        # finished (within the grace of ``stop``), not left for the next owner's claim seconds later
        try:
            await self._handle_all(ob, inbox.take(), scanned)
        except (RedisError, OSError) as exc:  # left pending in our name: claimed once idle
            log.warning("dispatcher_redis_error", partition=ob.partition, error=str(exc), stopping=True)
            self.stats["redis_errors"] += 1

    async def _handle_all(self, ob: OutboxConn, entries: list[OutboxRecord], done: set[bytes]) -> None:
        """Handle handed-over entries in order, but those a read of our pending list handled (``done``)."""
        for entry_id, fields in entries:
            if entry_id not in done:
                await self._handle(ob, entry_id, fields)

    async def _read_through(self, ob: OutboxConn, start: str, stopping: asyncio.Event) -> set[bytes]:
        """Read without blocking and handle until nothing is left: our pending entries (``start`` "0")
        or entries no consumer has read (">"). Returns the ids handled."""
        handled: set[bytes] = set()
        last = start
        while not stopping.is_set():
            self.stats["polls"] += 1
            reply = await ob.conn.xreadgroup(GROUP, self.consumer, {ob.stream: last}, count=100)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            for entry_id, fields in entries:
                handled.add(entry_id)
                await self._handle(ob, entry_id, fields)
            if last != ">":
                last = entries[-1][0]  # the pending list: go on after the last one
        return handled

    async def _recover(self, ob: OutboxConn, exc: BaseException, backoff: float) -> float:
        """After a Redis error: log, wait ``backoff``, recreate a vanished group; returns the next backoff."""
        log.warning("dispatcher_redis_error", partition=ob.partition, error=str(exc), retry_in=backoff)
        self.stats["redis_errors"] += 1
        await asyncio.sleep(backoff)
        if "NOGROUP" in str(exc):  # the stream or group vanished (e.g. Redis restarted without data)
            with contextlib.suppress(RedisError, OSError):
                await ob.conn.xgroup_create(ob.stream, GROUP, id="0", mkstream=True)
        return min(backoff * 2, 2.0)

    async def _trim(self, ob: OutboxConn) -> None:
        """Drop outbox entries every relay is done with (acknowledged), so the stream stays small
        (:func:`ledger.streams.trim_bound`; the ledger's audit trail, not the outbox, is the record)."""
        group = group_row(await ob.conn.xinfo_groups(ob.stream), GROUP)
        pending = await ob.conn.xpending(ob.stream, GROUP) if group and int(group.get("pending") or 0) else None
        bound = trim_bound(group, pending)
        if bound is not None:
            trimmed = await ob.conn.xtrim(ob.stream, minid=bound, approximate=True)
            self.stats["trimmed"] += int(trimmed or 0)

    async def _claim(self, ob: OutboxConn) -> None:
        start = "0-0"
        while True:
            reply = await ob.conn.xautoclaim(ob.stream, GROUP, self.consumer, self.claim_idle_ms, start, count=100)
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if fields is None:  # trimmed while pending
                    await ob.conn.xack(ob.stream, GROUP, entry_id)
                    continue
                self.stats["claimed"] += 1
                await self._handle(ob, entry_id, fields)
            if start in (b"0-0", "0-0"):
                return

    async def _handle(self, ob: OutboxConn, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            entry = parse_entry(entry_id, fields)
        except MalformedEntry as exc:
            dead = self.keys.partition(ob.partition).dead
            await ob.conn.xadd(dead, {"source": ob.stream, "entry": entry_id, "reason": f"malformed outbox: {exc}"})
            await ob.conn.xack(ob.stream, GROUP, entry_id)
            log.error("dispatcher_malformed_entry", partition=ob.partition, entry=entry_id.decode(), error=str(exc))
            self.stats["malformed"] += 1
            return
        await self.effects.apply(entry, ob)
