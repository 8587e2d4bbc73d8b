"""What the relay does for each kind of outbox entry (start, update, cancel), each acknowledging the
entry only with or after its effect, in as few round trips as its ordering allows.

A start takes one round trip: a script that skips a task the ledger has closed, clears a stale abort
marker, enqueues as arq's ``enqueue_job`` does, records the dispatch and acknowledges
(``workers.queue.enqueue_and_record``). An update to an active job and a cancel take one each: a
script reads the current job, decides its activeness as arq's ``Job.status`` does
(``JOB_ACTIVE_LUA``) and writes and acknowledges in the same step (see ``docs/workers.md``, "Round
trips per entry"). The loops that read the entries are in :mod:`workers.dispatcher`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import msgspec
import structlog
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from redis.asyncio import Redis

from ledger import Keys, Ledger
from ledger.models import OutboxEntry, OutboxKind
from ledger.resp import evalsha
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

#: The relays' consumer group on every partition's outbox stream.
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
_UPDATE_SHA = hashlib.sha1(_UPDATE_LUA.encode()).hexdigest()
_CANCEL_SHA = hashlib.sha1(_CANCEL_LUA.encode()).hexdigest()
_ENQUEUED_STAT = {
    Enqueued.CREATED: "enqueued",
    Enqueued.DUPLICATE: "duplicates",
    Enqueued.TASK_CLOSED: "skipped_closed",
}
_DELIVERED_STAT = {"delivered": "updates", "late": "updates", "duplicate": "duplicate_updates"}


class MalformedEntry(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class OutboxConn:
    """One partition's outbox as a relay loop works on it: the stream, and the connection the loop
    holds (its commands skip the pool's per-command checkout: a lock and a health check, ~14 µs of
    CPU each; pipelines and arq's calls still take pooled connections)."""

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


class OutboxEffects:
    """The effect of each kind of outbox entry; counts what it did in ``stats``."""

    def __init__(self, pool: ArqRedis, keys: Keys, stats: Counter[str], *, keep_result_s: float) -> None:
        self.pool = pool
        self.keys = keys
        self.stats = stats
        self.keep_result_s = keep_result_s

    async def apply(self, entry: OutboxEntry, ob: OutboxConn) -> None:
        """Relay one entry. Each kind acknowledges it itself, only once arq accepted the call (or it
        was a no-op), mostly inside its last write: a crash before that redelivers the entry."""
        match entry.kind:
            case OutboxKind.START:
                await self._start(entry, ob)
            case OutboxKind.UPDATE:
                await self._update(entry, ob)
            case OutboxKind.CANCEL:
                await self._cancel(entry, ob)

    async def _dispatch(
        self, entry: OutboxEntry, ob: OutboxConn, dispatch: int, explanation: str, *, only_if_open: bool
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
        # the parts, not the job id: built on every entry, the id cost more than the dropped debug line
        log.debug(
            "dispatched", conversation_id=entry.conversation_id, task_id=entry.task_id, dispatch=dispatch, outcome=done
        )

    async def _start(self, entry: OutboxEntry, ob: OutboxConn) -> None:
        # one round trip: skipped (and acknowledged) when the ledger closed the task before we got here
        await self._dispatch(entry, ob, entry.attempt, entry.text, only_if_open=True)

    async def _update(self, entry: OutboxEntry, ob: OutboxConn) -> None:
        tk = self.keys.task(entry.conversation_id, entry.task_id)
        fields = update_fields(entry.text, entry.turn_id, entry.ledger_version)
        flat = [str(v) for kv in fields.items() for v in kv]
        # one round trip: the job's state, the delivery, and (for an active job) the acknowledgement
        raw_jid, active, outcome = await evalsha(
            ob.conn, _UPDATE_SHA, _UPDATE_LUA, [tk.run, tk.updates, ob.stream, self.keys.queue],
            [entry.entry_id, GROUP, *job_key_prefixes(), *flat],
        )  # fmt: skip
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
        log.info("redispatch", conversation_id=entry.conversation_id, task_id=entry.task_id, dispatch=run, previous=jid)
        await self._dispatch(entry, ob, run, task.summary, only_if_open=False)  # just read: open

    async def _cancel(self, entry: OutboxEntry, ob: OutboxConn) -> None:
        tk = self.keys.task(entry.conversation_id, entry.task_id)
        fallback = job_id(self.keys, entry.conversation_id, entry.task_id, entry.attempt)
        # one round trip: the job's state, the marker (only for a job that will still run), the expiries
        # and the acknowledgement
        active = await evalsha(
            ob.conn, _CANCEL_SHA, _CANCEL_LUA, [tk.run, tk.updates, ob.stream, self.keys.queue, abort_jobs_ss],
            [fallback, GROUP, entry.entry_id, *job_key_prefixes(), abort_score(), max(1, int(self.keep_result_s))],
        )  # fmt: skip
        self.stats["aborted" if active else "cancel_no_job"] += 1
