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

import time
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from redis.asyncio import ConnectionPool
from redis.asyncio.client import Pipeline

from ledger import Keys

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


async def enqueue_task(
    pool: ArqRedis,
    keys: Keys,
    conversation_id: str,
    task_id: str,
    dispatch: int,
    explanation: str,
    *,
    clear_abort: bool = True,
) -> bool:
    """Enqueue ``run_task`` for one dispatch; True if this call created the job, False if it existed.

    A marker left in ``arq:abort`` by an earlier job with the same id would abort this one before it
    starts (arq#485), so it is removed first. A marker added *after* the ZREM comes from a cancel of
    this very job and is honoured. ``clear_abort=False`` skips the ZREM for a caller that has just seen
    (in its own pipelined read, :func:`abort_marker_of`) that there is no marker: one round trip less.
    """
    jid = job_id(keys, conversation_id, task_id, dispatch)
    if clear_abort:
        await pool.zrem(abort_jobs_ss, jid)
    created = await pool.enqueue_job(
        RUN_TASK, conversation_id, task_id, dispatch, explanation, _job_id=jid, _queue_name=keys.queue
    )
    return created is not None


def abort_marker_of(pipe: Pipeline, jid: str) -> None:
    """Queue the read of ``jid``'s abort marker (its score, or None) on ``pipe``."""
    pipe.zscore(abort_jobs_ss, jid)


def abort_score() -> int:
    """The score of an abort marker added now: the time in ms, as arq's ``Job.abort`` writes it.

    arq's abort marker (``arq:abort``, member = job id) makes the worker running the job (or about to
    start it) cancel it at its next poll. Add one only for queued or running jobs (see
    :data:`ACTIVE_STATES`): a marker for a finished job would never be removed and would abort the next
    job that reuses the id. The relay adds it inside its cancel script, without waiting for the result
    as ``Job.abort`` does (the relay must not block on a worker).
    """
    return int(time.time() * 1000)
