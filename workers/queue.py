"""The arq side of dispatch: msgpack serializer (no pickle), the pool, job ids, enqueue, abort markers, state.

Every job of a task has the id ``<prefix>:<conversation>:<task>:<dispatch>``; ``dispatch`` is 1 for the
ledger's start and grows with every re-dispatch, so an id is never reused for a different job. The
prefix is there because arq's own keys (``arq:job:<id>``, ``arq:result:<id>``) are global: without it two
deployments (or test runs) sharing a Redis would dedup each other's jobs. Two arq 0.28
behaviours shape this module (see docs/workers.md):

* ``enqueue_job`` dedups only on the job and result keys: a second enqueue of an id returns ``None``
  while the job is queued, running or its result is kept (``keep_result_s``).
* Abort markers (``arq:abort``) never expire (python-arq/arq#485) and abort the *next* job that starts
  with that id. We only mark jobs that are queued or running, and clear any marker of an id right
  before enqueueing it.
"""

from __future__ import annotations

import hashlib
import time
from enum import Enum
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job, JobStatus, serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool, Redis

from ledger import Keys, TaskStatus
from ledger.keys import glob_escape
from ledger.resp import Arg, evalsha

#: arq function name of the task runner (workers/runner.py)
RUN_TASK = "run_task"
#: job states in which the job will still run (or is running): no re-dispatch, an abort can land
ACTIVE_STATES = frozenset({JobStatus.queued, JobStatus.deferred, JobStatus.in_progress})
#: Lua function ``job_active(jid, queue, result_prefix, in_progress_prefix)``: whether arq 0.28's
#: ``Job.status()`` would return one of :data:`ACTIVE_STATES`, for scripts that decide on it in the
#: same atomic step as their writes (the relay's, one round trip instead of a read and a write).
#: Same checks, same order as ``Job.status``: a result key means complete even while the in-progress
#: key still exists (arq keeps it a while after a cron job); then in-progress; then a score in the
#: queue, which arq tests for truthiness (a score of 0 counts as not found). Queued vs deferred (the
#: score against the clock) does not matter here, both are active, so the function needs no clock.
#: The caller passes the prefixes from :func:`job_key_prefixes` (arq's constants, never literals).
JOB_ACTIVE_LUA = """
local function job_active(jid, queue, result_prefix, in_progress_prefix)
  if redis.call('EXISTS', result_prefix .. jid) == 1 then return false end
  if redis.call('EXISTS', in_progress_prefix .. jid) == 1 then return true end
  local score = redis.call('ZSCORE', queue, jid)
  return score ~= false and tonumber(score) ~= 0
end
"""


def _enc_hook(obj: object) -> object:
    # arq stores a job's exception as its result (an aborted job's result is CancelledError); keep it
    # readable as text instead of failing the result write ("unable to serialize result").
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    # msgspec's enc_hook contract: NotImplementedError means "this type is not supported"
    raise NotImplementedError(f"cannot serialize {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder()


def serialize(data: dict[str, Any]) -> bytes:
    """arq ``job_serializer``: msgpack via msgspec (job payloads and results)."""
    return _encoder.encode(data)


def deserialize(data: bytes) -> dict[str, Any]:
    """arq ``job_deserializer``: the inverse of :func:`serialize`."""
    decoded: dict[str, Any] = _decoder.decode(data)
    return decoded


def create_pool(redis_url: str, keys: Keys, *, client_name: str | None = None) -> ArqRedis:
    """An arq pool on ``redis_url`` with our serializer and queue; close it with ``await pool.aclose()``."""
    conn_pool = ConnectionPool.from_url(redis_url, socket_connect_timeout=2.0, client_name=client_name)
    pool = ArqRedis(
        pool_or_conn=conn_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=keys.queue,
    )
    # the client owns its connection pool (what Redis.from_pool does): aclose() closes both
    pool.auto_close_connection_pool = True
    return pool


def job_id(keys: Keys, conversation_id: str, task_id: str, dispatch: int) -> str:
    """The deterministic arq job id of one dispatch of a task."""
    return f"{keys.prefix}:{conversation_id}:{task_id}:{dispatch}"


def job(pool: ArqRedis, keys: Keys, jid: str) -> Job:
    """An arq ``Job`` handle with our deserializer (a bare ``Job(id, redis)`` would use pickle)."""
    return Job(jid, pool, _queue_name=keys.queue, _deserializer=deserialize)


async def job_state(pool: ArqRedis, keys: Keys, jid: str) -> JobStatus:
    return await job(pool, keys, jid).status()


def job_key_prefixes() -> tuple[str, str]:
    """arq's result and in-progress key prefixes, the arguments :data:`JOB_ACTIVE_LUA` needs."""
    return result_key_prefix, in_progress_key_prefix


class Enqueued(str, Enum):
    """What :func:`enqueue_and_record` did (the outbox entry is acknowledged in every case)."""

    CREATED = "created"
    #: the job (or its kept result) exists: arq's dedup
    DUPLICATE = "duplicate"
    #: asked to check the task, and the ledger has it closed (or not at all): nothing enqueued
    TASK_CLOSED = "task_closed"


_ENQUEUED = {1: Enqueued.CREATED, 0: Enqueued.DUPLICATE, -1: Enqueued.TASK_CLOSED}
#: The ledger's task statuses in which a task still runs (what ``Task.is_open`` says), for the script.
_OPEN_STATUSES = tuple(s.value for s in TaskStatus if s.is_open)

#: One dispatch of a task in one atomic step (the relay's start and re-dispatch: one round trip where
#: a task read, arq's ``enqueue_job`` (WATCH / EXISTS / MULTI-EXEC) and the record took five):
#:
#: 0. when asked (ARGV[8], the task id, is not empty), look at the task in the ledger (its JSON in the
#:    conversation's task hash, as the ledger's apply script writes it): closed or missing means the
#:    ledger cancelled or finished it before the relay got to its start: acknowledge, write nothing;
#: 1. enqueue exactly as arq 0.28's ``ArqRedis.enqueue_job`` does for a job that is not deferred: if
#:    the job key or the result key exists, write nothing (a duplicate); else ``PSETEX`` the job key
#:    with the payload (built in Python by arq's own ``serialize_job``) and ``ZADD`` the id to the
#:    queue with score = the enqueue time;
#: 2. when the job is created, first remove the job id's abort marker, if any: a marker left by an
#:    earlier job with the same id would abort this one before it starts (arq#485). On a duplicate the
#:    marker is left alone: with the job (or its result) still there, a marker can only be a cancel of
#:    that very job, and the check and the clear are one atomic step;
#: 3. record the dispatch in the task's run hash, only forward (a late redelivered start must not
#:    regress it), and acknowledge the outbox entry: in both the created and the duplicate case.
#:
#: The reads (a task that is not JSON, a non-numeric ``dispatch``) come before any write, so a failing
#: script writes nothing and the entry stays pending. Every key is in KEYS: the job id is known here.
#: KEYS: job key, result key, queue, abort set, task run hash, outbox, the conversation's task hash.
#: ARGV: job id, payload, expiry in ms, score, dispatch, group, entry id, task id to check ('' = no
#: check), the open statuses...
#: Returns 1 if this call created the job, 0 if it existed, -1 if the task is closed or missing.
ENQUEUE_AND_RECORD_LUA = """
if ARGV[8] ~= '' then
  local raw = redis.call('HGET', KEYS[7], ARGV[8])
  local open = false
  if raw then
    local status = cjson.decode(raw).status
    for i = 9, #ARGV do
      if status == ARGV[i] then open = true end
    end
  end
  if not open then
    redis.call('XACK', KEYS[6], ARGV[6], ARGV[7])
    return -1
  end
end
local forward = tonumber(ARGV[5]) >= tonumber(redis.call('HGET', KEYS[5], 'dispatch') or '0')
local created = 0
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  created = 1
end
if forward then
  redis.call('HSET', KEYS[5], 'dispatch', ARGV[5], 'job', ARGV[1])
end
redis.call('XACK', KEYS[6], ARGV[6], ARGV[7])
return created
"""
_ENQUEUE_AND_RECORD_SHA = hashlib.sha1(ENQUEUE_AND_RECORD_LUA.encode()).hexdigest()


async def enqueue_and_record(
    pool: ArqRedis,
    keys: Keys,
    conversation_id: str,
    task_id: str,
    dispatch: int,
    explanation: str,
    *,
    outbox: str,
    group: str,
    entry_id: str,
    only_if_open: bool = False,
    client: Redis,
) -> Enqueued:
    """Enqueue ``run_task`` for one dispatch, record it and acknowledge its outbox entry, in one round trip.

    ``CREATED`` if this call created the job, ``DUPLICATE`` if it existed (job or result key: arq's
    dedup), ``TASK_CLOSED`` if ``only_if_open`` and the ledger has the task closed or not at all
    (nothing enqueued). The entry ``entry_id`` of ``outbox`` is acknowledged in every case, in the
    same atomic step (:data:`ENQUEUE_AND_RECORD_LUA`). Runs on ``client``, a connection held by its
    caller (a ``single_connection_client``, as the relay's loops hold one); ``pool`` gives arq's
    serializer and expiry.

    A marker left in ``arq:abort`` by an earlier job with the same id would abort this one before it
    starts (arq#485), so it is removed when the job is created. A marker found on a duplicate, or
    added *after* this step, comes from a cancel of this very job and is honoured.

    This writes arq's job records itself instead of calling ``ArqRedis.enqueue_job``, which pins us
    to arq 0.28's layout (``arq:job:<id>``, ``arq:result:<id>``, a queue sorted set scored by the
    enqueue time in ms; pyproject pins ``arq>=0.28,<0.29``). We depend on that layout already (abort
    markers, ``JOB_ACTIVE_LUA``); the key prefixes come from ``arq.constants`` and the payload from
    arq's own ``serialize_job`` with the pool's serializer, the expiry is ``expires_extra_ms`` (what
    arq computes when score == enqueue time), and tests/test_dispatcher.py compares the result with
    ``enqueue_job``'s. The check and the writes are one script, which is stronger than arq's
    WATCH/MULTI: no window for a concurrent enqueue, so no ``WatchError`` to turn into "existed".
    """
    jid = job_id(keys, conversation_id, task_id, dispatch)
    enqueue_time_ms = timestamp_ms()
    payload = serialize_job(
        RUN_TASK,
        (conversation_id, task_id, dispatch, explanation),
        {},
        None,
        enqueue_time_ms,
        serializer=pool.job_serializer,
    )
    script_keys = [
        job_key_prefix + jid,
        result_key_prefix + jid,
        keys.queue,
        abort_jobs_ss,
        keys.task(conversation_id, task_id).run,
        outbox,
        keys.conversation(conversation_id).tasks,
    ]
    args: list[Arg] = [
        jid,
        payload,
        pool.expires_extra_ms,
        enqueue_time_ms,
        dispatch,
        group,
        entry_id,
        task_id if only_if_open else "",
        *_OPEN_STATUSES,
    ]
    done = await evalsha(client, _ENQUEUE_AND_RECORD_SHA, ENQUEUE_AND_RECORD_LUA, script_keys, args)
    return _ENQUEUED[int(done)]


def abort_score() -> int:
    """The score of an abort marker added now: the time in ms, as arq's ``Job.abort`` writes it.

    arq's abort marker (``arq:abort``, member = job id) makes the worker running the job (or about to
    start it) cancel it at its next poll. Add one only for queued or running jobs (see
    :data:`ACTIVE_STATES`): a marker for a finished job would never be removed and would abort the next
    job that reuses the id. The relay adds it inside its cancel script, without waiting for the result
    as ``Job.abort`` does (the relay must not block on a worker).
    """
    return int(time.time() * 1000)


async def forget_jobs(redis: Redis, keys: Keys) -> int:
    """Delete arq's records of every job of ``keys``' deployment; returns how many went.

    arq names its records itself, outside our key prefix (``arq:job:<id>``, ``arq:result:<id>``,
    ``arq:in-progress:<id>``, ``arq:retry:<id>``, and the ``arq:abort`` markers), so deleting a
    prefix's keys leaves them behind: a job that no worker ran keeps its record for a day and its
    abort marker for good. Job ids start with the prefix (:func:`job_id`), which is what is matched.
    For throw-away deployments (benchmarks, tests); never run it under a prefix whose workers still run.
    """
    gone = 0
    for record in (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix):
        gone += await _delete_matching(redis, f"{glob_escape(record)}{keys.pattern()}")
    markers = [m async for m, _score in redis.zscan_iter(abort_jobs_ss, match=keys.pattern(), count=1000)]
    for i in range(0, len(markers), 500):
        gone += await redis.zrem(abort_jobs_ss, *markers[i : i + 500])
    return gone


async def drop_deployment(redis: Redis, keys: Keys) -> int:
    """Delete every key of a throw-away deployment (a benchmark's): its prefix's keys and arq's
    records of its jobs (:func:`forget_jobs`). Returns how many went."""
    return await forget_jobs(redis, keys) + await _delete_matching(redis, keys.pattern())


async def _delete_matching(redis: Redis, pattern: str) -> int:
    gone = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            gone += await redis.delete(*batch)
            batch = []
    if batch:
        gone += await redis.delete(*batch)
    return gone
