"""The consumer-group reader of one owned partition, feeding its conversation lanes.

Life of a partition owned by this instance:

1. Recovery: every entry still pending in the group (left by a dead or previous owner, or by this
   process before it lost the lease) is claimed with ``XAUTOCLAIM`` from id ``0-0`` (min idle 0: the
   lease makes us the only legitimate consumer) and processed first, in stream order. Its delivery
   count comes from ``XPENDING``; past ``max_deliveries`` it goes to the dead-letter stream. Entries
   trimmed from the stream while pending (Redis 7 returns their ids apart; 6.2 returns them with no
   fields) are recorded as dead letters, never dropped silently.
2. Then ``XREADGROUP >`` in batches (a fenced script), never reading more than the free in-flight
   slots; when a read comes back short, a plain blocking ``XREAD`` past the group's last-delivered id
   waits for the next entry, sent in one write with the next fenced read (Redis runs that read as
   soon as the wait ends: :meth:`PartitionStream.wait_then_read`). These reads go over one
   connection the loop holds (:mod:`orchestrator.partition_stream`); the lanes' commits and dead letters
   use the shared pool.
3. Malformed entries (anything :func:`ledger.turns.decode_entry` refuses) are dead-lettered and
   acknowledged in one fenced Lua step; the loop keeps going.

Stopping: :meth:`PartitionWorker.drain` (rebalance, shutdown) stops reading, lets the current
``XREADGROUP`` return (never cancelled, so no delivered entry is dropped on the floor) and waits for
the lanes; :meth:`PartitionWorker.abort` (lease lost) cancels everything at once without committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ledger import Keys, LeaseLost
from ledger.turns import InvalidTurn, Turn, decode_entry, encode_turn
from orchestrator.lanes import Capacity, Lanes
from orchestrator.membership import Lease
from orchestrator.metrics import Metrics
from orchestrator.partition_stream import CLAIM, GROUP, READ, TRANSIENT, PartitionStream, as_text, fields_of

__all__ = ["GROUP", "TRANSIENT", "Entry", "PartitionWorker", "Processor", "backoff"]

log = structlog.get_logger("sraq.partition")


@dataclass(slots=True)
class Entry:
    """A decoded turn read from a partition stream."""

    entry_id: str
    turn: Turn
    deliveries: int = 1
    read_at: float = field(default_factory=time.perf_counter)


class Processor(Protocol):
    async def process(self, entry: Entry, lease: Lease) -> None: ...


def backoff(attempt: int, cap: float = 2.0) -> float:
    """Exponential backoff with jitter: 50 ms, 100 ms, ... up to ``cap`` seconds."""
    return float(min(cap, 0.05 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2))


class PartitionWorker:
    """Reads partition ``lease.partition`` as consumer ``consumer`` and processes its turns in lanes."""

    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        lease: Lease,
        consumer: str,
        capacity: Capacity,
        processor: Processor,
        metrics: Metrics,
        read_batch: int,
        read_block_ms: int,
        max_deliveries: int,
        max_content_bytes: int,
        on_failure: Callable[[PartitionWorker, BaseException], None],
    ) -> None:
        self.redis = redis
        self.lease = lease
        self.partition = lease.partition
        self.pk = keys.partition(lease.partition)
        #: the stream's side: fenced reads over the loop's own connection, waits, claims, dead letters
        self.stream = PartitionStream(redis, keys, lease, consumer, read_block_ms=read_block_ms)
        self.capacity = capacity
        self.processor = processor
        self.metrics = metrics
        self.read_batch = read_batch
        self.max_deliveries = max_deliveries
        self.max_content_bytes = max_content_bytes
        self._on_failure = on_failure
        self.lanes: Lanes[Entry] = Lanes(f"p{self.partition}", capacity, self._handle, self._lane_failed)
        self._stop = asyncio.Event()
        #: what the read loop awaits while the process is full (Capacity.room), cancelled on stop
        self._room: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lost = False  # set when the lease is gone: no further commit may be attempted
        self.aborting = False  # set by the owner once it started aborting this worker
        self.log = log.bind(partition=self.partition)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"reader:p{self.partition}")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop_reading(self) -> None:
        self._stop.set()
        if self._room is not None:
            self._room.cancel()  # the read loop stops waiting for a free slot

    async def drain(self, grace: float | None) -> bool:
        """Stop reading and wait for every read turn to finish; False when ``grace`` ran out."""
        self.stop_reading()
        deadline = None if grace is None else time.monotonic() + grace
        if self._reader is not None:
            # normally bounded by read_block_ms (the blocking wait returns, read entries go to the
            # lanes); the grace deadline bounds it when Redis hangs
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._reader)
            except TimeoutError:
                return False
            except asyncio.CancelledError:
                if not self._reader.cancelled():
                    raise
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return await self.lanes.drain(left)

    async def abort(self) -> None:
        """Stop at once: cancel the reader and every lane. Uncommitted turns stay pending in the stream."""
        self.stop_reading()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.lanes.cancel()

    def lease_lost(self) -> None:
        """Called when a commit was refused by fencing: stop work on this partition now."""
        if self.lost:
            return
        self.lost = True
        self.stop_reading()
        self.log.warning("lease_lost", token=self.lease.token)
        self._on_failure(self, LeaseLost(self.partition))

    def _lane_failed(self, exc: BaseException) -> None:
        self._on_failure(self, exc)

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        try:
            await self._ensure_group()
            await self._recover()
            failures = 0
            last_id: str | None = None  # the group's last-delivered id; only our reads move it
            drained = False
            while not self.stopping:
                room = await self._wait_room()
                if room == 0:
                    continue
                # Slots are reserved before a read, at most the free ones and with no await in between,
                # so the readers of all partitions never read more between them than there is room
                # for. A read sent behind a wait for the next entry (PartitionStream.wait_then_read) holds its slot
                # for as long as the partition is idle, so it asks for one entry, and only while
                # such holds stay within the capacity's wait budget (idle partitions must not sit on
                # room a busy one needs); past it, the reader waits holding nothing, then reads.
                holds = drained and self.capacity.may_hold_for_wait()
                count = (1 if holds else 0) if drained else min(room, self.read_batch)
                self.capacity.reserve(count, wait=holds)
                entries: list[Any] = []
                try:
                    if last_id is None:
                        last_id = await self.stream.last_delivered()
                    if drained and not holds:
                        # holding nothing: a slot this reader was woken for goes to the next waiter
                        self.capacity.pass_on()
                        drained = not await self.stream.wait_for_entry(last_id)
                        continue
                    if drained:
                        # the last read got less than it asked for: wait for the next entry, then read;
                        # drained still unless the wait saw more entries than the read took
                        reply, more = await self.stream.wait_then_read(last_id, count)
                        entries = reply[0][1] if reply else []
                        drained = not more
                    else:
                        reply = await self.stream.fenced(READ, count)
                        entries = reply[0][1] if reply else []
                        drained = len(entries) < count
                    if entries:
                        last_id = as_text(entries[-1][0])
                except TRANSIENT as exc:
                    # the slots go back before the backoff: other partitions may read meanwhile
                    self.capacity.release(count, wait=holds)
                    count, holds = 0, False
                    failures += 1
                    self.metrics.redis_errors.inc()
                    self.log.warning("read_failed", error=str(exc), retry=failures)
                    await self._sleep(backoff(failures))
                    continue
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await self._ensure_group()
                    last_id = None
                    continue
                finally:
                    self.capacity.release(count - len(entries), wait=holds)
                failures = 0
                await self._accept_all([(as_text(eid), fields_of(fields), 1) for eid, fields in entries])
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self.lease_lost()
        except BaseException as exc:
            self.log.error("reader_failed", error=repr(exc), exc_info=exc)
            self._on_failure(self, exc)
        finally:
            await self.stream.aclose()

    async def _ensure_group(self) -> None:
        for attempt in range(1, 1_000_000):
            try:
                await self.stream.create_group()
                return
            except TRANSIENT as exc:
                self.log.warning("group_create_failed", error=str(exc))
                await self._sleep(backoff(attempt))
                if self.stopping:
                    return

    async def _recover(self) -> None:
        """Claim and process every pending entry of the group before reading new ones."""
        start = "0-0"
        claimed_total = 0
        attempt = 0
        while not self.stopping:
            room = await self._wait_room()
            if room == 0:
                continue
            count = min(room, self.read_batch)
            self.capacity.reserve(count)  # as the read loop does: never claim more than there is room for
            entries: list[tuple[str, dict[bytes, bytes] | None]] = []
            try:
                reply = await self.stream.fenced(CLAIM, count, start)
                entries = [(as_text(eid), fields_of(fields)) for eid, fields in reply[1]]
                deleted = [as_text(d) for d in (reply[2] if len(reply) > 2 else [])]
                counts = await self.stream.delivery_counts([eid for eid, fields in entries if fields is not None])
            except TRANSIENT as exc:
                self.capacity.release(count)
                attempt += 1
                self.metrics.redis_errors.inc()
                self.log.warning("recover_failed", error=str(exc), retry=attempt)
                await self._sleep(backoff(attempt))
                continue
            except BaseException:
                self.capacity.release(count)
                raise
            self.capacity.release(count - len(entries))
            for entry_id in deleted:
                await self._dead(entry_id, "trimmed", "entry was trimmed from the stream while pending", {}, 0)
            await self._accept_all([(eid, fields, counts.get(eid, 1)) for eid, fields in entries])
            claimed_total += len(entries) + len(deleted)
            next_id = as_text(reply[0])
            if next_id == "0-0":
                break
            start = next_id
        if claimed_total:
            self.log.info("recovered_pending", entries=claimed_total)

    async def _accept_all(self, read: list[tuple[str, dict[bytes, bytes] | None, int]]) -> None:
        """Queue the entries of one read (id, fields, deliveries) in their lanes, each on one of the
        slots reserved for the read; a dead-lettered entry gives its slot back, as does every entry
        not reached when this stops early (an error; they stay pending in the stream)."""
        left = len(read)
        try:
            for entry_id, fields, deliveries in read:
                queued = await self._accept(entry_id, fields, deliveries)
                left -= 1
                if not queued:
                    self.capacity.release(1)
        except BaseException:
            self.capacity.release(left)
            raise

    async def _accept(self, entry_id: str, fields: dict[bytes, bytes] | None, deliveries: int) -> bool:
        """Decode one entry and queue it in its conversation's lane on a reserved slot (True), or
        dead-letter it (False)."""
        if fields is None:  # Redis 6.2 XAUTOCLAIM / history read of an entry trimmed while pending
            await self._dead(entry_id, "trimmed", "entry was trimmed from the stream while pending", {}, deliveries)
            return False
        try:
            turn = decode_entry(fields, max_content_bytes=self.max_content_bytes)
        except InvalidTurn as exc:
            await self._dead(entry_id, "invalid", exc.reason, fields, deliveries)
            return False
        if deliveries > self.max_deliveries:
            reason = f"delivered {deliveries} times (max {self.max_deliveries})"
            # the last error an earlier attempt recorded (an owner that crashed mid-turn left none)
            last = await self.stream.last_error(entry_id)
            if last:
                reason += f"; last error: {last}"
            await self._dead(entry_id, "deliveries", reason, fields, deliveries)
            return False
        self.lanes.submit(turn.conversation_id, Entry(entry_id, turn, deliveries), reserved=True)
        return True

    async def _dead(self, entry_id: str, kind: str, reason: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        """Move an entry to the dead-letter stream and acknowledge it (retried while Redis is away)."""
        for attempt in range(1, 1_000_000):
            try:
                written = await self.stream.dead_letter(entry_id, kind, reason, fields, deliveries)
                break
            except TRANSIENT as exc:
                self.metrics.redis_errors.inc()
                self.log.warning("dead_letter_failed", error=str(exc), retry=attempt)
                await self._sleep(backoff(attempt))
        if written:
            self.metrics.dead_letters.labels(reason=kind).inc()
            self.log.warning("dead_letter", entry_id=entry_id, reason_kind=kind, reason=reason, deliveries=deliveries)

    async def _wait_room(self) -> int:
        """Wait for a free in-flight slot; returns how many are free (0 once stopping)."""
        capacity = self.capacity
        while capacity.used >= capacity.limit and not self.stopping:
            fut = self._room = capacity.room()
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    capacity.pass_on()  # woken, then cancelled before taking the slot
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the read loop itself is cancelled (abort)
                # else stop_reading() cancelled the wait
            finally:
                self._room = None
            if self.stopping and not fut.cancelled():
                capacity.pass_on()  # woken, but not reading: the next waiter gets the slot
        return 0 if self.stopping else capacity.free

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # ------------------------------------------------------------------ processing

    async def _handle(self, entry: Entry) -> None:
        """Lane handler: process one turn; transient Redis failures retry, others count as deliveries."""
        failures = 0
        transient = 0
        while not self.lost:
            try:
                await self.processor.process(entry, self.lease)
                if failures or entry.deliveries > 1:  # (rare: only then can an error be on record)
                    await self._forget_error(entry.entry_id)
                return
            except LeaseLost:
                self.lease_lost()
                return
            except TRANSIENT as exc:
                # the turn is fine, Redis is not: retry until it is back (or the lease lapses and the
                # runtime aborts this partition; the entry then stays pending for the next owner)
                transient += 1
                self.metrics.redis_errors.inc()
                self.log.warning("turn_retry", turn_id=entry.turn.turn_id, error=str(exc), retry=transient)
                await asyncio.sleep(backoff(transient))
            except Exception as exc:
                failures += 1
                self.log.error("turn_failed", turn_id=entry.turn.turn_id, error=repr(exc), exc_info=exc)
                if entry.deliveries + failures > self.max_deliveries:
                    reason = f"failed {failures} times; last error: {exc!r}"[:1000]
                    await self._dead(entry.entry_id, "failed", reason, _turn_fields(entry.turn), entry.deliveries)
                    return
                # on record for whoever owns the entry next, should this process die before it is done
                await self._record_error(entry.entry_id, repr(exc)[:1000])
                await asyncio.sleep(backoff(failures))

    async def _record_error(self, entry_id: str, error: str) -> None:
        with contextlib.suppress(*TRANSIENT):  # best effort: the dead letter then says less, nothing is lost
            await self.redis.hset(self.pk.errors, entry_id, error)  # type: ignore[misc]

    async def _forget_error(self, entry_id: str) -> None:
        with contextlib.suppress(*TRANSIENT):
            await self.redis.hdel(self.pk.errors, entry_id)  # type: ignore[misc]


def _turn_fields(turn: Turn) -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in encode_turn(turn).items()}
