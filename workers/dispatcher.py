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

Exactly once, by construction: an entry is XACKed only with or after its effect (a start's enqueue and
its acknowledgement are one atomic step), so a relay that dies between the ledger commit and the
enqueue leaves the entry unread or pending; the next relay (or the same consumer after a restart, or
any consumer after ``claim_idle_ms`` via XAUTOCLAIM) processes it again, and the deterministic job id
makes the second enqueue a no-op. Runs in ``sraq dispatcher``
or inside the orchestrator process for the partitions it owns (:meth:`Dispatcher.set_partitions`).

Cost: the relay's CPU is mostly Redis round trips (tens of microseconds of client CPU each), so each
kind uses as few as its ordering allows: the acknowledgement rides in the entry's last write (a script
or a pipeline), reads that do not depend on each other share a pipeline, and each partition loop
holds one connection for its own commands. A start takes one round trip: a script that skips a task
the ledger has closed, clears a stale abort marker, enqueues as arq's ``enqueue_job`` does, records
the dispatch and acknowledges (``enqueue_and_record``; five before, arq's enqueue alone being three:
0.31–0.41 ms of relay CPU per start; with two round trips 0.20–0.24 ms; now 0.13 ms, on the 2-vCPU
dev box). An update to an
active job and a cancel take one each: a script reads the current job, decides its activeness as
arq's ``Job.status`` does (``JOB_ACTIVE_LUA``) and writes and acknowledges in the same step (three
each before: about 0.25–0.35 ms of relay CPU per entry, now 0.06–0.13 ms; see ``docs/workers.md``,
"Round trips per entry").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import structlog
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ledger import Keys, Ledger
from ledger.models import OutboxEntry, OutboxKind
from workers.context import update_fields
from workers.queue import (
    JOB_ACTIVE_LUA,
    Enqueued,
    abort_score,
    enqueue_and_record,
    job_id,
    job_key_prefixes,
)

log = structlog.get_logger("sraq.workers.dispatcher")

GROUP = "dispatcher"
#: Why these two scripts build keys from ARGV: they decide on the task's *current* job, whose id
#: lives in Redis (the run hash's ``job`` field), and reading it first would cost a round trip of its
#: own. So the script reads the id and appends it to arq's key prefixes (passed in, from
#: ``arq.constants``). Fine on the standalone Redis arq needs anyway (its keys are global, its enqueue
#: transaction spans the job key and the queue); every other key is in KEYS.
#:
#: An update in one step: look at the current job in the same atomic step as the delivery (a running
#: handler that read the update and finished at once must not make its job look "not running": no
#: spurious re-dispatch), deliver the update to the task's update stream under the outbox entry's id
#: (a redelivered entry is not delivered twice), and acknowledge the entry only if the job is active:
#: a queued job reads the update when it starts, a running one now. Otherwise the entry stays pending
#: for the re-dispatch that follows in Python (the new job reads the delivered update from the stream).
#: KEYS: task run hash, task update stream, outbox, arq queue.
#: ARGV: entry id, group, result key prefix, in-progress key prefix, field, value, ...
#: Returns {job id ("" when the task has none), 1 if active else 0, outcome}; the outcome is
#: "delivered", "duplicate" (this id is there already) or "late" (a later entry got there first, e.g.
#: claimed out of order: delivered under a new id).
_UPDATE_LUA = (
    JOB_ACTIVE_LUA
    + """
local jid = redis.call('HGET', KEYS[1], 'job')
local active = jid and job_active(jid, KEYS[4], ARGV[3], ARGV[4])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local outcome = 'delivered'
local added = redis.pcall('XADD', KEYS[2], ARGV[1], unpack(fields))
if type(added) == 'table' and added.err then
  if not string.find(added.err, 'equal or smaller', 1, true) then
    return redis.error_reply(added.err)
  end
  if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) > 0 then
    outcome = 'duplicate'
  else
    redis.call('XADD', KEYS[2], '*', unpack(fields))
    outcome = 'late'
  end
end
if active then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
end
return {jid or '', active and 1 or 0, outcome}
"""
)
#: A cancel in one step: the task's current job (else ARGV[1], the job of the entry's attempt: a cancel
#: that overtook its start), arq's abort marker for it only if it is active (a marker for a finished
#: job would never be removed and would abort the next job with that id, arq#485), the expiry of the
#: closed task's update stream and run record (they go with the job results), and the acknowledgement.
#: KEYS: task run hash, task update stream, outbox, arq queue, arq abort set.
#: ARGV: fallback job id, group, entry id, result key prefix, in-progress key prefix, marker score
#: (the client's time in ms, as ``Job.abort`` scores it), expiry in seconds.
#: Returns 1 if the job was active (marked), else 0.
_CANCEL_LUA = (
    JOB_ACTIVE_LUA
    + """
local jid = redis.call('HGET', KEYS[1], 'job')
if not jid or jid == '' then jid = ARGV[1] end
local active = job_active(jid, KEYS[4], ARGV[4], ARGV[5])
if active then
  redis.call('ZADD', KEYS[5], ARGV[6], jid)
end
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
if active then return 1 end
return 0
"""
)
_ENQUEUED_STAT = {
    Enqueued.CREATED: "enqueued",
    Enqueued.DUPLICATE: "duplicates",
    Enqueued.TASK_CLOSED: "skipped_closed",
}
_DELIVERED_STAT = {"delivered": "updates", "late": "updates", "duplicate": "duplicate_updates"}


class MalformedEntry(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Outbox:
    """One partition's relay loop: its outbox stream and the connection it holds while it runs.

    The loop's own commands (reads, acknowledgements, scripts) go over that connection, skipping the
    pool's per-command checkout (a lock and a health check: ~14 µs of CPU per command); pipelines
    and arq's calls still take pooled connections.
    """

    partition: int
    stream: str
    conn: Redis
    #: the ledger's reads over that connection
    ledger: Ledger


def parse_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> OutboxEntry:
    """Decode one outbox stream entry written by ``ledger/lua/apply.lua``."""
    try:
        text = {k.decode(): v.decode("utf-8") for k, v in fields.items()}
        return OutboxEntry(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            kind=OutboxKind(text["kind"]),
            conversation_id=text["conv"],
            task_id=text["task"],
            attempt=int(text.get("attempt") or 1),
            text=text.get("text", ""),
            turn_id=text.get("turn", ""),
            ledger_version=int(text.get("lv") or 0),
        )
    except (KeyError, ValueError, UnicodeDecodeError, msgspec.ValidationError) as exc:
        raise MalformedEntry(f"{type(exc).__name__}: {exc}") from None


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
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.consumer = consumer
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.grace_s = grace_s
        self.keep_result_s = keep_result_s
        self.stats: Counter[str] = Counter()
        self._wanted = set(range(keys.partitions) if partitions is None else partitions)
        self._loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._update_script = pool.register_script(_UPDATE_LUA)
        self._cancel_script = pool.register_script(_CANCEL_LUA)
        self._started = False
        #: set when a relay loop died of an unexpected error (``error`` says which); hosts should stop
        self.failed = asyncio.Event()
        self.error: BaseException | None = None

    @property
    def partitions(self) -> set[int]:
        return set(self._loops)

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
        ob = _Outbox(p, self.keys.partition(p).outbox, held, Ledger(held, self.keys))
        try:
            await self._relay(ob, stopping)
        finally:
            await ob.conn.aclose()  # the held connection goes back to the pool

    async def _relay(self, ob: _Outbox, stopping: asyncio.Event) -> None:
        backoff = 0.05
        last_id = "0"  # first our own pending entries (a restart with the same consumer name) ...
        claim_due = 0.0
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            try:
                if loop.time() >= claim_due:  # ... and entries of relays that died holding them
                    claim_due = loop.time() + self.claim_idle_ms / 2000
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
                log.warning("dispatcher_redis_error", partition=ob.partition, error=str(exc), retry_in=backoff)
                self.stats["redis_errors"] += 1
                await asyncio.sleep(backoff)
                if "NOGROUP" in str(exc):  # the stream or group vanished (e.g. Redis restarted without data)
                    with contextlib.suppress(RedisError, OSError):
                        await ob.conn.xgroup_create(ob.stream, GROUP, id="0", mkstream=True)
                backoff = min(backoff * 2, 2.0)
                last_id = "0"  # whatever we held is still pending: go through it again

    async def _trim(self, ob: _Outbox) -> None:
        """Drop outbox entries every relay is done with (acknowledged), so the stream stays small.

        Safe bound: the oldest pending entry of the group, else its last-delivered id; everything
        before it was delivered and acknowledged. (The ledger's audit trail, not the outbox, is the record.)
        """
        groups = await ob.conn.xinfo_groups(ob.stream)
        group = next((g for g in groups if g.get("name") in (GROUP, GROUP.encode())), None)
        if group is None:
            return
        bound = group.get("last-delivered-id")
        if int(group.get("pending", 0)):
            oldest = await ob.conn.xpending_range(ob.stream, GROUP, min="-", max="+", count=1)
            bound = oldest[0]["message_id"] if oldest else None
        if bound and bound not in (b"0-0", "0-0"):
            trimmed = await ob.conn.xtrim(ob.stream, minid=bound, approximate=True)
            self.stats["trimmed"] += int(trimmed or 0)

    async def _claim(self, ob: _Outbox) -> None:
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

    async def _handle(self, ob: _Outbox, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            entry = parse_entry(entry_id, fields)
        except MalformedEntry as exc:
            dead = self.keys.partition(ob.partition).dead
            await ob.conn.xadd(dead, {"source": ob.stream, "entry": entry_id, "reason": f"malformed outbox: {exc}"})
            await ob.conn.xack(ob.stream, GROUP, entry_id)
            log.error("dispatcher_malformed_entry", partition=ob.partition, entry=entry_id.decode(), error=str(exc))
            self.stats["malformed"] += 1
            return
        # Each kind acknowledges the entry itself, only once arq accepted the call (or it was a no-op),
        # mostly inside its last write: a crash before that redelivers the entry.
        match entry.kind:
            case OutboxKind.START:
                await self._start(entry, ob)
            case OutboxKind.UPDATE:
                await self._update(entry, ob)
            case OutboxKind.CANCEL:
                await self._cancel(entry, ob)

    # ------------------------------------------------------------------ kinds

    async def _dispatch(
        self, entry: OutboxEntry, ob: _Outbox, dispatch: int, explanation: str, *, only_if_open: bool
    ) -> None:
        """Enqueue one dispatch of the task, record it and acknowledge the entry: one atomic step."""
        done = await enqueue_and_record(
            self.pool,
            self.keys,
            entry.conversation_id,
            entry.task_id,
            dispatch,
            explanation,
            outbox=ob.stream,
            group=GROUP,
            entry_id=entry.entry_id,
            only_if_open=only_if_open,
            client=ob.conn,
        )
        self.stats[_ENQUEUED_STAT[done]] += 1
        log.debug("dispatched", job=job_id(self.keys, entry.conversation_id, entry.task_id, dispatch), outcome=done)

    async def _start(self, entry: OutboxEntry, ob: _Outbox) -> None:
        # one round trip: skipped (and acknowledged) when the ledger closed the task before we got here
        await self._dispatch(entry, ob, entry.attempt, entry.text, only_if_open=True)

    async def _update(self, entry: OutboxEntry, ob: _Outbox) -> None:
        tk = self.keys.task(entry.conversation_id, entry.task_id)
        fields = update_fields(entry.text, entry.turn_id, entry.ledger_version)
        flat = [str(v) for kv in fields.items() for v in kv]
        # one round trip: the job's state, the delivery, and (for an active job) the acknowledgement
        raw_jid, active, outcome = await self._update_script(
            keys=[tk.run, tk.updates, ob.stream, self.keys.queue],
            args=[entry.entry_id, GROUP, *job_key_prefixes(), *flat],
            client=ob.conn,
        )
        self.stats[_DELIVERED_STAT[outcome.decode()]] += 1
        if active:
            return
        jid = raw_jid.decode() or None
        task = await ob.ledger.task(entry.conversation_id, entry.task_id)
        if task is None or not task.is_open:
            await ob.conn.xack(ob.stream, GROUP, entry.entry_id)
            return
        run: int = await ob.conn.hincrby(tk.run, "dispatch", 1)  # type: ignore[misc]
        self.stats["redispatched"] += 1
        log.info("redispatch", conversation=entry.conversation_id, task=entry.task_id, dispatch=run, previous=jid)
        await self._dispatch(entry, ob, run, task.summary, only_if_open=False)  # just read: open

    async def _cancel(self, entry: OutboxEntry, ob: _Outbox) -> None:
        tk = self.keys.task(entry.conversation_id, entry.task_id)
        fallback = job_id(self.keys, entry.conversation_id, entry.task_id, entry.attempt)
        # one round trip: the job's state, the marker (only for a job that will still run), the expiries
        # and the acknowledgement
        active = await self._cancel_script(
            keys=[tk.run, tk.updates, ob.stream, self.keys.queue, abort_jobs_ss],
            args=[fallback, GROUP, entry.entry_id, *job_key_prefixes(), abort_score(), max(1, int(self.keep_result_s))],
            client=ob.conn,
        )
        self.stats["aborted" if active else "cancel_no_job"] += 1
