"""The Redis side of one owned partition's turn stream, as its read loop uses it.

:class:`PartitionStream` holds the read loop's own connection (the pool's per-command checkout costs
a lock and a health check, ~14 µs of CPU each) and sends every read through the fencing script, so a
stale owner cannot pull entries into its own pending list; it also writes the dead letters. What to
read when, and where entries go, is :class:`orchestrator.partition.PartitionWorker`'s business.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger import Keys, LeaseLost
from ledger.resp import exchange, pack_bulk, pack_command_head, pack_evalsha, reloading
from orchestrator.membership import Lease

GROUP = "orchestrator"
DEAD_MAXLEN = 100_000
#: Errors after which a retry with backoff is right: the turn is fine, Redis is (briefly) not.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

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


class PartitionStream:
    """Fenced reads, waits, claims and dead letters of partition ``lease.partition`` for ``consumer``."""

    def __init__(self, redis: Redis, keys: Keys, lease: Lease, consumer: str, *, read_block_ms: int) -> None:
        #: the read loop's own connection (same pool, held while the loop runs)
        self.reader = redis.client()
        self.lease = lease
        self.partition = lease.partition
        self.pk = keys.partition(lease.partition)
        self.consumer = consumer
        self._dead_letter = redis.register_script(DEAD_LETTER_LUA)
        self._read_script = redis.register_script(_FENCED_READ)
        # the wait of wait_then_read and wait_for_entry, packed once: only the id to wait after varies.
        # COUNT 2: whether more than the one entry the read behind it takes has come (see wait_then_read)
        self._wait_prefix = pack_command_head(
            ["XREAD", "COUNT", 2, "BLOCK", read_block_ms, "STREAMS", self.pk.turns], nargs=1
        )
        self._fenced_reads: dict[int, bytes] = {}
        #: fenced reads sent (behind a wait or not): a steady trickle should cost one per entry
        self.reads = 0

    async def aclose(self) -> None:
        """The held connection back to the pool (one cancelled mid-reply was dropped already)."""
        await self.reader.aclose()

    async def fenced(self, mode: str, count: int, start: str = "0-0") -> Any:
        """XREADGROUP ``>`` or XAUTOCLAIM, only while our lease holds (raises LeaseLost otherwise)."""
        self.reads += mode == READ
        reply = await self._read_script(
            keys=[self.pk.lease, self.pk.turns],
            args=[self.lease.token, GROUP, self.consumer, count, mode, start],
            client=self.reader,
        )
        return self._unfenced(reply)

    def _packed_read(self, count: int) -> bytes:
        """The fenced ``XREADGROUP`` of up to ``count`` entries as RESP (one per count, kept)."""
        packed = self._fenced_reads.get(count)
        if packed is None:
            args: list[str | int] = [self.lease.token, GROUP, self.consumer, count, READ, "0-0"]
            packed = self._fenced_reads[count] = pack_evalsha(
                self._read_script.sha, [self.pk.lease, self.pk.turns], args
            )
        return packed

    def _unfenced(self, reply: list[Any]) -> Any:
        if as_text(reply[0]) == "lease":
            raise LeaseLost(self.partition)
        return reply[1] if len(reply) > 1 else None

    async def wait_then_read(self, after: str, count: int) -> tuple[Any, bool]:
        """Nothing new to read: wait for an entry past ``after``, then read like :meth:`fenced`, in one write.
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
        see PartitionWorker._read_loop), so the wait asks for two: Redis runs the read right after the wait ends,
        and if the wait saw more new entries than the read takes, the caller reads the rest at once
        instead of waiting again.

        Both replies are always read (a reply left unread would be taken for the next command's); a
        connection error or a cancellation drops the connection (:func:`ledger.resp.exchange`).
        """
        self.reads += 1
        conn = await self._held()
        wait, read = self._wait_prefix + pack_bulk(after), self._packed_read(count)
        # a restarted Redis lost the script: the read goes again once it is loaded (not the wait)
        replies = await reloading(self.reader, _FENCED_READ, [wait, read], functools.partial(exchange, conn))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        # whatever the wait returned (entries, or nil after the block time), the read says what is ours
        waited = replies[0][0][1] if replies[0] else []
        return self._unfenced(replies[1]), len(waited) > count

    async def wait_for_entry(self, after: str) -> bool:
        """Wait for an entry past ``after`` (up to the block time) without reading it: the wait of
        :meth:`wait_then_read` alone, for when no slot can be held meanwhile. True if one came."""
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

    async def last_delivered(self) -> str:
        """The group's last-delivered id (read once; afterwards our own reads tell us)."""
        groups = await self.reader.xinfo_groups(self.pk.turns)
        last = next((g.get("last-delivered-id") for g in groups if as_text(g.get("name", b"")) == GROUP), None)
        return as_text(last) if last else "0-0"

    async def create_group(self) -> None:
        """The consumer group, from the stream's start (creating the stream); there already is fine."""
        try:
            await self.reader.xgroup_create(self.pk.turns, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """How many times each of our pending entries ``ids`` (in stream order) was delivered."""
        if not ids:
            return {}
        rows = await self.reader.xpending_range(
            self.pk.turns, GROUP, min=ids[0], max=ids[-1], count=len(ids) + 16, consumername=self.consumer
        )
        return {as_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def last_error(self, entry_id: str) -> str | None:
        """The error an earlier attempt at ``entry_id`` recorded (see PartitionWorker._handle), if any."""
        try:
            last: bytes | None = await self.reader.hget(self.pk.errors, entry_id)  # type: ignore[misc]
        except TRANSIENT:  # best effort, as its recording: the dead letter then says less, nothing is lost
            return None
        return last.decode(errors="replace") if last else None

    async def dead_letter(
        self, entry_id: str, kind: str, reason: str, fields: dict[bytes, bytes], deliveries: int
    ) -> bool:
        """Move an entry to the dead-letter stream and acknowledge it, in one fenced step; False if it
        was done already (a retry). Raises LeaseLost when the lease is no longer ours."""
        args: list[str | bytes | int] = [self.lease.token, GROUP, entry_id, kind]
        args += ["entry_id", entry_id, "reason", reason, "deliveries", deliveries, "partition", self.partition]
        args += ["at", int(time.time() * 1000)]
        for name, value in fields.items():
            args += [b"field:" + name, value]
        result = int(
            await self._dead_letter(keys=[self.pk.lease, self.pk.turns, self.pk.dead, self.pk.errors], args=args)
        )
        if result == -1:
            raise LeaseLost(self.partition)
        return result == 1


def as_text(value: bytes | str | int) -> str:
    """A reply value (an entry id, a name) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields_of(flat: list[bytes] | dict[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """Stream entry fields from a script reply (a flat list); None/false for an entry trimmed while pending."""
    if not flat:
        return None
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))
