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
   soon as the wait ends: :meth:`PartitionWorker._wait_then_read`). These reads go over one
   connection the loop holds (no pool checkout per command); the lanes' commits and dead letters
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
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger import Keys, LeaseLost
from ledger.resp import exchange, pack_bulk, pack_command_head, pack_evalsha, reloading
from ledger.turns import InvalidTurn, Turn, decode_entry, encode_turn
from orchestrator.lanes import Capacity, Lanes
from orchestrator.membership import Lease
from orchestrator.metrics import Metrics

GROUP = "orchestrator"
DEAD_MAXLEN = 100_000
#: Errors after which a retry with backoff is right: the turn is fine, Redis is (briefly) not.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

log = structlog.get_logger("sraq.partition")

# KEYS: 1 lease, 2 turns, 3 dead, 4 errors. ARGV: 1 token, 2 group, 3 entry id, 4.. dead-letter fields.
# XACK first: if the entry was acknowledged already (a retried call), nothing is written twice. Entries
# trimmed while pending are not in the PEL any more (Redis 7 XAUTOCLAIM dropped them), so XACK cannot
# tell a retry: the newest dead letter can (only the lease holder writes them, one at a time, and a
# retry follows its lost first attempt at once). ARGV[5], ARGV[6] are "entry_id", the id.
DEAD_LETTER_LUA = f"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local acked = redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
if acked == 0 then
  if ARGV[4] ~= 'trimmed' then return 0 end
  local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
  if newest and newest[2][4] == ARGV[3] then return 0 end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', {DEAD_MAXLEN}, '*', 'reason_kind', ARGV[4], unpack(ARGV, 5))
return 1
"""


# Reads are fenced too: a stale owner (paused past its lease) must not move entries into its own
# pending list, or the new owner would read newer entries first and break per-conversation order.
# KEYS: 1 lease, 2 turns. ARGV: 1 token, 2 group, 3 consumer, 4 count, 5 mode (read|claim), 6 claim start.
READ, CLAIM = "read", "claim"
_FENCED_READ = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lease'} end
if ARGV[5] == 'read' then
  return {'ok', redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], '>')}
end
return {'ok', redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[6], 'COUNT', ARGV[4])}
"""


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
        #: the read loop's own connection (same pool, held while the loop runs): its commands skip the
        #: pool's per-command checkout (a lock and a health check, ~14 µs of CPU each). Lanes use ``redis``.
        self.reader = redis.client()
        self.lease = lease
        self.partition = lease.partition
        self.pk = keys.partition(lease.partition)
        self.consumer = consumer
        self.capacity = capacity
        self.processor = processor
        self.metrics = metrics
        self.read_batch = read_batch
        self.read_block_ms = read_block_ms
        self.max_deliveries = max_deliveries
        self.max_content_bytes = max_content_bytes
        self._on_failure = on_failure
        self.lanes: Lanes[Entry] = Lanes(f"p{self.partition}", capacity, self._handle, self._lane_failed)
        self._dead_letter = redis.register_script(DEAD_LETTER_LUA)
        self._read_script = redis.register_script(_FENCED_READ)
        # the wait of _wait_then_read and _wait_for_entry, packed once: only the id to wait after varies.
        # COUNT 2: whether more than the one entry the read behind it takes has come (see _wait_then_read)
        self._wait_prefix = pack_command_head(
            ["XREAD", "COUNT", 2, "BLOCK", read_block_ms, "STREAMS", self.pk.turns], nargs=1
        )
        self._fenced_reads: dict[int, bytes] = {}
        #: fenced reads the read loop sent (behind a wait or not): a steady trickle should cost one per entry
        self.reads = 0
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
                # for. A read sent behind a wait for the next entry (_wait_then_read) holds its slot
                # for as long as the partition is idle, so it asks for one entry, and only while
                # such holds stay within the capacity's wait budget (idle partitions must not sit on
                # room a busy one needs); past it, the reader waits holding nothing, then reads.
                holds = drained and self.capacity.may_hold_for_wait()
                count = (1 if holds else 0) if drained else min(room, self.read_batch)
                self.capacity.reserve(count, wait=holds)
                entries: list[Any] = []
                try:
                    if last_id is None:
                        last_id = await self._last_delivered()
                    if drained and not holds:
                        drained = not await self._wait_for_entry(last_id)
                        continue
                    self.reads += 1
                    if drained:
                        # the last read got less than it asked for: wait for the next entry, then read;
                        # drained still unless the wait saw more entries than the read took
                        reply, more = await self._wait_then_read(last_id, count)
                        entries = reply[0][1] if reply else []
                        drained = not more
                    else:
                        reply = await self._fenced(READ, count)
                        entries = reply[0][1] if reply else []
                        drained = len(entries) < count
                    if entries:
                        last_id = _text(entries[-1][0])
                except TRANSIENT as exc:
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
                await self._accept_all([(_text(eid), _fields(fields), 1) for eid, fields in entries])
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self.lease_lost()
        except BaseException as exc:
            self.log.error("reader_failed", error=repr(exc), exc_info=exc)
            self._on_failure(self, exc)
        finally:
            # back to the pool (a command cancelled mid-reply has already dropped the connection)
            await self.reader.aclose()

    async def _fenced(self, mode: str, count: int, start: str = "0-0") -> Any:
        """XREADGROUP ``>`` or XAUTOCLAIM, only while our lease holds (raises LeaseLost otherwise)."""
        reply = await self._read_script(
            keys=[self.pk.lease, self.pk.turns],
            args=[self.lease.token, GROUP, self.consumer, count, mode, start],
            client=self.reader,
        )
        return self._unfenced(reply)

    def _fenced_read(self, count: int) -> bytes:
        """The fenced ``XREADGROUP`` of up to ``count`` entries as RESP (one per count, kept)."""
        packed = self._fenced_reads.get(count)
        if packed is None:
            args: list[str | int] = [self.lease.token, GROUP, self.consumer, count, READ, "0-0"]
            packed = self._fenced_reads[count] = pack_evalsha(
                self._read_script.sha, [self.pk.lease, self.pk.turns], args
            )
        return packed

    def _unfenced(self, reply: list[Any]) -> Any:
        if _text(reply[0]) == "lease":
            raise LeaseLost(self.partition)
        return reply[1] if len(reply) > 1 else None

    async def _wait_then_read(self, after: str, count: int) -> tuple[Any, bool]:
        """Nothing new to read: wait for an entry past ``after``, then read like :meth:`_fenced`, in one write.
        Returns the read's reply, and whether the wait saw more entries than ``count`` (read on at once).

        The two commands go out together: a plain ``XREAD BLOCK`` past the group's last-delivered id
        ``after`` (no delivery, no side effect), then the fenced ``XREADGROUP`` script. Redis does not
        run a blocked client's next command until the block ends, so the read runs the moment an
        entry arrives (or the block times out), exactly as if we had sent it then, without the round
        trip back to us in between: at a steady rate that is one socket write and one loop wake-up per
        read instead of two (the wait was ~9% of the orchestrator's CPU at 1,000 turns/s, with the
        read's round trip on top). Past the group's id, not the stream's tail: an entry appended after
        our last read returns at once instead of waiting the whole block time (~500 ms outliers in
        ``sraq bench handoff`` before). The id is tracked from our own fenced reads, the only ones that
        move it, so waiting costs no ``XINFO`` round trip per idle cycle.

        The read asks for few entries (it holds a slot per entry for as long as the partition is idle:
        see the read loop), so the wait asks for two: Redis runs the read right after the wait ends,
        and if the wait saw more new entries than the read takes, the caller reads the rest at once
        instead of waiting again.

        Both replies are always read (a reply left unread would be taken for the next command's); a
        connection error or a cancellation drops the connection (:func:`ledger.resp.exchange`).
        """
        conn = await self._held()
        packed = self._wait_prefix + pack_bulk(after) + self._fenced_read(count)
        # a restarted Redis lost the script: both go again (the wait returns at once if entries came)
        replies = await reloading(self.reader, _FENCED_READ, lambda: exchange(conn, packed, 2))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        # whatever the wait returned (entries, or nil after the block time), the read says what is ours
        waited = replies[0][0][1] if replies[0] else []
        return self._unfenced(replies[1]), len(waited) > count

    async def _wait_for_entry(self, after: str) -> bool:
        """Wait for an entry past ``after`` (up to the block time) without reading it: the wait of
        :meth:`_wait_then_read` alone, for when no slot can be held meanwhile. True if one came."""
        conn = await self._held()
        (reply,) = await exchange(conn, self._wait_prefix + pack_bulk(after), 1)
        if isinstance(reply, Exception):
            raise reply
        return bool(reply)

    async def _held(self) -> Connection:
        """The read loop's held connection (created on first use)."""
        conn = self.reader.connection
        if conn is None:
            await self.reader.initialize()
            conn = self.reader.connection
            assert conn is not None
        return conn

    async def _last_delivered(self) -> str:
        """The group's last-delivered id (read once; afterwards our own reads tell us)."""
        groups = await self.reader.xinfo_groups(self.pk.turns)
        last = next((g.get("last-delivered-id") for g in groups if _text(g.get("name", b"")) == GROUP), None)
        return _text(last) if last else "0-0"

    async def _ensure_group(self) -> None:
        for attempt in range(1, 1_000_000):
            try:
                await self.reader.xgroup_create(self.pk.turns, GROUP, id="0", mkstream=True)
                return
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return
                raise
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
                reply = await self._fenced(CLAIM, count, start)
                entries = [(_text(eid), _fields(fields)) for eid, fields in reply[1]]
                deleted = [_text(d) for d in (reply[2] if len(reply) > 2 else [])]
                counts = await self._delivery_counts([eid for eid, fields in entries if fields is not None])
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
            next_id = _text(reply[0])
            if next_id == "0-0":
                break
            start = next_id
        if claimed_total:
            self.log.info("recovered_pending", entries=claimed_total)

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self.reader.xpending_range(
            self.pk.turns, GROUP, min=ids[0], max=ids[-1], count=len(ids) + 16, consumername=self.consumer
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

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
            last: bytes | None = await self.reader.hget(self.pk.errors, entry_id)  # type: ignore[misc]
            if last:
                reason += f"; last error: {last.decode(errors='replace')}"
            await self._dead(entry_id, "deliveries", reason, fields, deliveries)
            return False
        self.lanes.submit(turn.conversation_id, Entry(entry_id, turn, deliveries), reserved=True)
        return True

    async def _dead(self, entry_id: str, kind: str, reason: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        """Move an entry to the dead-letter stream and acknowledge it (one fenced Lua step)."""
        args: list[str | bytes | int] = [self.lease.token, GROUP, entry_id, kind]
        args += ["entry_id", entry_id, "reason", reason, "deliveries", deliveries, "partition", self.partition]
        args += ["at", int(time.time() * 1000)]
        for name, value in fields.items():
            args += [b"field:" + name, value]
        for attempt in range(1, 1_000_000):
            try:
                result = await self._dead_letter(
                    keys=[self.pk.lease, self.pk.turns, self.pk.dead, self.pk.errors], args=args
                )
                break
            except TRANSIENT as exc:
                self.metrics.redis_errors.inc()
                self.log.warning("dead_letter_failed", error=str(exc), retry=attempt)
                await self._sleep(backoff(attempt))
        if int(result) == -1:
            raise LeaseLost(self.partition)
        if int(result) == 1:
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
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the read loop itself is cancelled (abort)
                # else stop_reading() cancelled the wait
            finally:
                self._room = None
                if self.stopping and fut.done() and not fut.cancelled():
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


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(flat: list[bytes] | dict[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """Stream entry fields from a script reply (a flat list); None/false for an entry trimmed while pending."""
    if not flat:
        return None
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))
