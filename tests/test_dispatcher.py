"""The outbox relay against real Redis (no worker running): exactly-once enqueue, crash recovery, abort ids."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import JobStatus, deserialize_job
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ledger import CancelOp, Keys, Ledger, StartOp, UpdateOp
from tests.workers_support import wait_until
from workers.dispatcher import GROUP, PHASES, Dispatcher, next_due
from workers.queue import (
    ACTIVE_STATES,
    RUN_TASK,
    Enqueued,
    create_pool,
    deserialize,
    drop_deployment,
    enqueue_and_record,
    forget_jobs,
    job_id,
    job_state,
)


@pytest.fixture
async def pool(redis_url: str, keys: Keys) -> AsyncIterator[ArqRedis]:
    arq_pool = create_pool(redis_url, keys)
    try:
        yield arq_pool
    finally:
        await arq_pool.aclose()


def relay(pool: ArqRedis, keys: Keys, consumer: str = "relay-a", *, fed: bool = False, **kw: int) -> Dispatcher:
    """A standalone relay (blocking reads), or with ``fed`` one as the orchestrator hosts it: entries
    written without a hand-over (as every ``ledger.apply`` here is) reach it through its polls."""
    return Dispatcher(pool, keys, consumer=consumer, block_ms=100, claim_idle_ms=kw.get("claim_idle_ms", 300), fed=fed)


both_ways_in = pytest.mark.parametrize("fed", [False, True], ids=["blocking", "fed"])


async def run_until_settled(redis: Redis, keys: Keys, d: Dispatcher, conv: str = "c1") -> Dispatcher:
    """Run relay ``d`` until every outbox entry of ``conv``'s partition is acknowledged; returns it stopped."""
    await d.start()
    try:
        await wait_until(lambda: settled(redis, keys, conv))
    finally:
        await d.stop()
    return d


async def relay_until_settled(redis: Redis, pool: ArqRedis, keys: Keys, conv: str = "c1") -> Dispatcher:
    """Run a standalone relay until every outbox entry of ``conv``'s partition is acknowledged."""
    return await run_until_settled(redis, keys, relay(pool, keys), conv)


async def queued(redis: Redis, keys: Keys) -> list[str]:
    return [m.decode() for m in await redis.zrange(keys.queue, 0, -1)]


async def settled(redis: Redis, keys: Keys, conv: str) -> bool:
    """Every outbox entry of the conversation's partition is delivered and acknowledged."""
    outbox = keys.partition(keys.partition_of(conv)).outbox
    groups = await redis.xinfo_groups(outbox)
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["lag"] == 0


async def test_start_enqueues_one_msgpack_job(redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("find flights")])
    d = await relay_until_settled(redis, pool, keys)
    jid = job_id(keys, "c1", "task-1", 1)
    assert await queued(redis, keys) == [jid]
    payload = deserialize(await redis.get(job_key_prefix + jid))
    assert payload["f"] == "run_task" and payload["a"] == ["c1", "task-1", 1, "find flights"]
    assert d.stats["enqueued"] == 1
    assert await redis.hgetall(keys.task("c1", "task-1").run) == {b"dispatch": b"1", b"job": jid.encode()}


async def test_relay_run_twice_gives_one_job(redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await ledger.apply("c1", 1, "u2", [StartOp("b")])
    first = relay(pool, keys, "relay-a")
    await first.start()
    await wait_until(lambda: settled(redis, keys, "c1"))
    await first.stop()
    # rewind the group: every entry is delivered again, to a second relay process
    outbox = keys.partition(keys.partition_of("c1")).outbox
    await redis.xgroup_setid(outbox, GROUP, "0")
    second = relay(pool, keys, "relay-b")
    await run_until_settled(redis, keys, second)
    assert sorted(await queued(redis, keys)) == [job_id(keys, "c1", "task-1", 1), job_id(keys, "c1", "task-2", 1)]
    assert first.stats["enqueued"] == 2 and second.stats["duplicates"] == 2 and second.stats["enqueued"] == 0


@both_ways_in
async def test_relay_dead_between_commit_and_enqueue(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, fed: bool
) -> None:
    """A relay read the entry and died before enqueueing: another relay claims it; exactly one job."""
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    outbox = keys.partition(keys.partition_of("c1")).outbox
    await redis.xgroup_create(outbox, GROUP, id="0", mkstream=True)
    taken = await redis.xreadgroup(GROUP, "dead-relay", {outbox: ">"})  # read, never enqueued, never acked
    assert len(taken[0][1]) == 1 and await queued(redis, keys) == []
    live = relay(pool, keys, "relay-live", fed=fed, claim_idle_ms=200)
    await run_until_settled(redis, keys, live)
    assert await queued(redis, keys) == [job_id(keys, "c1", "task-1", 1)]
    assert live.stats["claimed"] == 1 and live.stats["enqueued"] == 1


@both_ways_in
async def test_restart_with_same_consumer_name_replays_own_pending(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, fed: bool
) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    outbox = keys.partition(keys.partition_of("c1")).outbox
    await redis.xgroup_create(outbox, GROUP, id="0", mkstream=True)
    await redis.xreadgroup(GROUP, "relay-a", {outbox: ">"})
    d = relay(pool, keys, "relay-a", fed=fed, claim_idle_ms=60_000)  # no claiming: its own pending list is read first
    await run_until_settled(redis, keys, d)
    assert await queued(redis, keys) == [job_id(keys, "c1", "task-1", 1)]


async def test_cancelled_before_relay_never_enqueues(redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await ledger.apply("c1", 1, "u2", [CancelOp("task-1", "changed my mind")])
    d = await relay_until_settled(redis, pool, keys)
    assert await queued(redis, keys) == []
    assert d.stats["skipped_closed"] == 1 and d.stats["cancel_no_job"] == 1
    assert await redis.zscore(abort_jobs_ss, job_id(keys, "c1", "task-1", 1)) is None  # no stale marker left


async def test_update_is_delivered_once(redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "only direct flights")])
    d = relay(pool, keys)
    await d.start()
    await wait_until(lambda: settled(redis, keys, "c1"))
    await redis.xgroup_setid(keys.partition(keys.partition_of("c1")).outbox, GROUP, "0")  # redeliver both
    await wait_until(lambda: settled(redis, keys, "c1"))
    await d.stop()
    updates = await redis.xrange(keys.task("c1", "task-1").updates)
    assert [f[b"text"] for _id, f in updates] == [b"only direct flights"]
    assert d.stats["duplicate_updates"] == 1
    assert await queued(redis, keys) == [job_id(keys, "c1", "task-1", 1)]  # queued job: no re-dispatch


async def _our_enqueue(
    redis: Redis, pool: ArqRedis, keys: Keys, conv: str = "c9", *, dispatch: int = 1, only_if_open: bool = False
) -> tuple[bool, str, bytes]:
    """``enqueue_and_record`` for one pending outbox entry of ``conv``: (created, job id, entry id)."""
    outcome, jid, entry_id = await _enqueue_outcome(
        redis, pool, keys, conv, dispatch=dispatch, only_if_open=only_if_open
    )
    return outcome is Enqueued.CREATED, jid, entry_id


async def _enqueue_outcome(
    redis: Redis, pool: ArqRedis, keys: Keys, conv: str = "c9", *, dispatch: int = 1, only_if_open: bool = False
) -> tuple[Enqueued, str, bytes]:
    outbox = keys.partition(keys.partition_of(conv)).outbox
    entry_id = await redis.xadd(outbox, {"kind": "start", "conv": conv, "task": "task-1"})
    with contextlib.suppress(ResponseError):  # BUSYGROUP
        await redis.xgroup_create(outbox, GROUP, id="0")
    await redis.xreadgroup(GROUP, "relay-a", {outbox: ">"})
    # a held connection, as each relay loop holds one
    held = Redis(connection_pool=pool.connection_pool, single_connection_client=True)
    try:
        outcome = await enqueue_and_record(
            pool,
            keys,
            conv,
            "task-1",
            dispatch,
            "x",
            outbox=outbox,
            group=GROUP,
            entry_id=entry_id.decode(),
            only_if_open=only_if_open,
            client=held,
        )
    finally:
        await held.aclose()
    return outcome, job_id(keys, conv, "task-1", dispatch), entry_id


async def _pending(redis: Redis, keys: Keys, conv: str = "c9") -> int:
    return int((await redis.xpending(keys.partition(keys.partition_of(conv)).outbox, GROUP))["pending"])


async def test_enqueue_and_record_writes_what_arqs_enqueue_job_writes(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """Contract with arq 0.28: our job (id B) and ``enqueue_job``'s (id A, same function and args) have
    the same payload (but the enqueue time), queue score and expiry."""
    jid_a = job_id(keys, "c8", "task-1", 1)
    assert await pool.enqueue_job(RUN_TASK, "c9", "task-1", 1, "x", _job_id=jid_a, _queue_name=keys.queue)
    created, jid_b, _entry = await _our_enqueue(redis, pool, keys)
    now_ms = time.time() * 1000
    assert created and await _pending(redis, keys) == 0
    theirs = deserialize_job(await redis.get(job_key_prefix + jid_a), deserializer=deserialize)
    ours = deserialize_job(await redis.get(job_key_prefix + jid_b), deserializer=deserialize)
    assert (ours.function, ours.args, ours.kwargs, ours.job_try) == ("run_task", ["c9", "task-1", 1, "x"], {}, None)
    assert (ours.function, ours.args, ours.kwargs, ours.job_try) == (
        theirs.function,
        theirs.args,
        theirs.kwargs,
        theirs.job_try,
    )
    assert abs((ours.enqueue_time - theirs.enqueue_time).total_seconds()) < 5
    # the same fields, the same types: only the enqueue time differs
    raw_a = deserialize(await redis.get(job_key_prefix + jid_a))
    raw_b = deserialize(await redis.get(job_key_prefix + jid_b))
    assert {k: v for k, v in raw_a.items() if k != "et"} == {k: v for k, v in raw_b.items() if k != "et"}
    assert type(raw_a["et"]) is type(raw_b["et"]) is int
    scores = dict(await redis.zrange(keys.queue, 0, -1, withscores=True))
    assert set(scores) == {jid_a.encode(), jid_b.encode()}
    for jid in (jid_a, jid_b):
        assert abs(scores[jid.encode()] - now_ms) < 5000
        assert pool.expires_extra_ms - 5000 < await redis.pttl(job_key_prefix + jid) <= pool.expires_extra_ms
    assert scores[jid_b.encode()] == raw_b["et"]  # score == enqueue time, as arq's for a job not deferred
    assert await job_state(pool, keys, jid_b) is await job_state(pool, keys, jid_a) is JobStatus.queued


async def test_enqueue_and_record_loads_its_script_after_redis_lost_it(
    redis: Redis, keys: Keys, pool: ArqRedis
) -> None:
    """Redis restarted without its script cache: the relay's one-step enqueue loads the script and
    goes through (enqueued, recorded, acknowledged)."""
    await redis.script_flush()
    created, jid, _entry = await _our_enqueue(redis, pool, keys)
    assert created and await _pending(redis, keys) == 0
    assert await job_state(pool, keys, jid) is JobStatus.queued


async def test_enqueue_and_record_dedups_on_the_job_key(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """A job key already there (queued or running): nothing written over it; still recorded and acked."""
    created, jid, _entry = await _our_enqueue(redis, pool, keys)
    assert created
    before = await redis.get(job_key_prefix + jid)
    await redis.zadd(keys.queue, {jid: 42})  # anything a second enqueue would overwrite
    await redis.pexpire(job_key_prefix + jid, 60_000)
    await redis.hset(keys.task("c9", "task-1").run, mapping={"dispatch": 0, "job": "older"})
    created, _jid, _entry = await _our_enqueue(redis, pool, keys)
    assert not created
    assert await redis.get(job_key_prefix + jid) == before and await redis.pttl(job_key_prefix + jid) <= 60_000
    assert await redis.zscore(keys.queue, jid) == 42
    assert await redis.hgetall(keys.task("c9", "task-1").run) == {b"dispatch": b"1", b"job": jid.encode()}
    assert await _pending(redis, keys) == 0


async def test_enqueue_and_record_dedups_on_the_result_key(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """A finished job (its result kept): not enqueued again; the entry is still recorded and acked."""
    jid = job_id(keys, "c9", "task-1", 1)
    await redis.set(result_key_prefix + jid, b"x", ex=60)
    created, _jid, _entry = await _our_enqueue(redis, pool, keys)
    assert not created
    assert await redis.exists(job_key_prefix + jid) == 0 and await queued(redis, keys) == []
    assert await redis.hget(keys.task("c9", "task-1").run, "job") == jid.encode()
    assert await _pending(redis, keys) == 0


async def test_enqueue_and_record_only_moves_the_record_forward(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """A late redelivered start (dispatch 1) after a re-dispatch (2): enqueued, acked, record kept at 2."""
    run = keys.task("c9", "task-1").run
    await redis.hset(run, mapping={"dispatch": 2, "job": "later"})
    created, jid, _entry = await _our_enqueue(redis, pool, keys, dispatch=1)
    assert created and await queued(redis, keys) == [jid] and await _pending(redis, keys) == 0
    assert await redis.hgetall(run) == {b"dispatch": b"2", b"job": b"later"}


async def test_enqueue_and_record_fails_whole(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """A record it cannot read (not a number) fails the step before any write: entry pending, no job."""
    jid = job_id(keys, "c9", "task-1", 1)
    await redis.zadd(abort_jobs_ss, {jid: 1})
    await redis.hset(keys.task("c9", "task-1").run, "dispatch", "not a number")
    with pytest.raises(ResponseError):
        await _our_enqueue(redis, pool, keys)
    assert await queued(redis, keys) == [] and await redis.exists(job_key_prefix + jid) == 0
    assert await redis.zscore(abort_jobs_ss, jid) == 1 and await _pending(redis, keys) == 1


async def test_stale_abort_marker_is_cleared_when_the_job_is_created(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    """arq#485: a marker of an earlier job would abort the next job with that id before it starts, so
    creating the job clears it; a redelivered start of the existing job leaves a marker alone (while
    the job exists, a marker is that job's cancel)."""
    jid = job_id(keys, "c9", "task-1", 1)
    await redis.zadd(abort_jobs_ss, {jid: 1})
    created, _jid, _entry = await _our_enqueue(redis, pool, keys)
    assert created and await queued(redis, keys) == [jid]
    assert await redis.zscore(abort_jobs_ss, jid) is None
    await redis.zadd(abort_jobs_ss, {jid: 2})  # a cancel of this very job, after it was enqueued
    created, _jid, _entry = await _our_enqueue(redis, pool, keys)
    assert not created
    assert await redis.zscore(abort_jobs_ss, jid) == 2
    await redis.zrem(abort_jobs_ss, jid)


@pytest.mark.parametrize("status", ["pending", "running", "completed", "failed", "cancelled", None])
async def test_enqueue_and_record_checks_the_task_when_asked(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, status: str | None
) -> None:
    """A start is enqueued only while the ledger has the task open; a closed or missing task's start is
    acknowledged with nothing written (the ledger's own JSON, as its apply script writes it)."""
    if status is not None:
        await ledger.apply("c9", None, "u1", [StartOp("find flights")])
        if status != "pending":
            raw = await redis.hget(keys.conversation("c9").tasks, "task-1")
            await redis.hset(keys.conversation("c9").tasks, "task-1", raw.replace(b'"pending"', f'"{status}"'.encode()))
        task = await ledger.task("c9", "task-1")
        assert task is not None and task.status.value == status  # the ledger reads what we wrote
        await redis.delete(keys.partition(keys.partition_of("c9")).outbox)  # only the entry below in it
    jid = job_id(keys, "c9", "task-1", 1)
    await redis.zadd(abort_jobs_ss, {jid: 1})
    outcome, _jid, _entry = await _enqueue_outcome(redis, pool, keys, only_if_open=True)
    is_open = status in ("pending", "running")
    assert outcome is (Enqueued.CREATED if is_open else Enqueued.TASK_CLOSED)
    assert await queued(redis, keys) == ([jid] if is_open else [])
    assert await redis.exists(job_key_prefix + jid, keys.task("c9", "task-1").run) == (2 if is_open else 0)
    assert await redis.zscore(abort_jobs_ss, jid) == (None if is_open else 1)  # nothing written when closed
    assert await _pending(redis, keys) == 0  # acknowledged either way
    # without the check (a re-dispatch, whose caller has just read the task open) it is enqueued
    await redis.zrem(abort_jobs_ss, jid)
    if not is_open:
        outcome, _jid, _entry = await _enqueue_outcome(redis, pool, keys)
        assert outcome is Enqueued.CREATED


async def test_relay_clears_a_stale_abort_marker_at_start(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """The relay reads the marker with the task (one round trip) and clears it only when one is there."""
    jid = job_id(keys, "c1", "task-1", 1)
    await redis.zadd(abort_jobs_ss, {jid: 1})  # left by an earlier job with the same id
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await relay_until_settled(redis, pool, keys)
    assert await queued(redis, keys) == [jid]
    assert await redis.zscore(abort_jobs_ss, jid) is None


async def test_cancel_marks_the_queued_job_and_expires_its_records(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    d = relay(pool, keys)
    await d.start()
    try:
        await wait_until(lambda: settled(redis, keys, "c1"))
        await ledger.apply("c1", 1, "u2", [CancelOp("task-1", "changed my mind")])
        await wait_until(lambda: settled(redis, keys, "c1"))
    finally:
        await d.stop()
    jid = job_id(keys, "c1", "task-1", 1)
    assert d.stats["aborted"] == 1 and await redis.zscore(abort_jobs_ss, jid) is not None
    assert 0 < await redis.ttl(keys.task("c1", "task-1").run) <= 86_400


async def test_forget_jobs_deletes_arqs_records_of_one_prefix_only(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    # the relay leaves arq's job records and abort markers (no worker runs here), outside the prefix
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await ledger.apply("c1", 1, "u2", [StartOp("b")])
    await relay_until_settled(redis, pool, keys)  # both queued, then task-2 cancelled while queued
    await ledger.apply("c1", 2, "u3", [CancelOp("task-2", "changed my mind")])
    await relay_until_settled(redis, pool, keys)
    jid, cancelled = job_id(keys, "c1", "task-1", 1), job_id(keys, "c1", "task-2", 1)
    assert await redis.exists(job_key_prefix + jid) and await redis.zscore(abort_jobs_ss, cancelled) is not None
    left = await redis.exists(job_key_prefix + cancelled)  # the cancel may expire it or leave it to arq
    # what a worker leaves behind, for this prefix and for another deployment sharing the Redis
    other = Keys(prefix=f"{keys.prefix}x", partitions=keys.partitions)
    other_jid = job_id(other, "c1", "task-1", 1)
    for j in (jid, other_jid):
        await redis.set(result_key_prefix + j, b"r", ex=60)
        await redis.set(in_progress_key_prefix + j, b"1", ex=60)
        await redis.set(retry_key_prefix + j, b"1", ex=60)
    await redis.set(job_key_prefix + other_jid, b"j", ex=60)
    await redis.zadd(abort_jobs_ss, {other_jid: 1})

    # task-1's job, result, in-progress and retry records, task-2's marker (and job record if left)
    assert await forget_jobs(redis, keys) == 5 + left
    for record in (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix):
        assert not await redis.exists(record + jid) and not await redis.exists(record + cancelled)
        assert await redis.exists(record + other_jid)  # another prefix's jobs are untouched
    assert await redis.zscore(abort_jobs_ss, cancelled) is None
    assert await redis.zscore(abort_jobs_ss, other_jid) is not None
    await forget_jobs(redis, other)


async def test_drop_deployment_takes_the_prefix_literally(redis: Redis, prefix: str) -> None:
    """A prefix with glob characters deletes its own keys, never those of a prefix it would match."""
    starry, other = Keys(prefix=f"{prefix}*", partitions=2), Keys(prefix=f"{prefix}x", partitions=2)
    for k in (starry, other):
        jid = job_id(k, "c1", "task-1", 1)
        await redis.set(k.instances, "1")
        await redis.set(job_key_prefix + jid, b"j")
        await redis.zadd(abort_jobs_ss, {jid: 1})
    assert await drop_deployment(redis, starry) == 3  # its key, its job record, its abort marker
    other_jid = job_id(other, "c1", "task-1", 1)
    assert await redis.exists(other.instances, job_key_prefix + other_jid) == 2
    assert await redis.zscore(abort_jobs_ss, other_jid) is not None
    assert await drop_deployment(redis, other) == 3


async def _put_job_in(redis: Redis, keys: Keys, jid: str, setup: str) -> None:
    """Make arq's records of a queued job look like another state (what a worker would leave behind)."""
    match setup:
        case "complete":  # the result is there; the in-progress key and the score too: result wins in arq
            await redis.set(result_key_prefix + jid, b"x", ex=60)
            await redis.set(in_progress_key_prefix + jid, b"1", ex=60)
        case "in_progress":  # running, and out of the queue: only the in-progress key says it is alive
            await redis.zrem(keys.queue, jid)
            await redis.set(in_progress_key_prefix + jid, b"1", ex=60)
        case "deferred":  # a score in the future
            await redis.zadd(keys.queue, {jid: (time.time() + 3600) * 1000})
        case "zero_score":  # arq tests the score for truthiness: 0 reads as not found
            await redis.zadd(keys.queue, {jid: 0})


#: (setup, arq's own verdict): the relay must agree with ``Job.status() in ACTIVE_STATES`` in each
JOB_SETUPS = [
    ("complete", JobStatus.complete),
    ("in_progress", JobStatus.in_progress),
    ("deferred", JobStatus.deferred),
    ("zero_score", JobStatus.not_found),
]


async def _relay_op_on_job_in(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, setup: str, status: JobStatus, op: UpdateOp | CancelOp
) -> Dispatcher:
    """Start task-1 and relay it, put its job in ``setup``'s state (arq must agree it is ``status``),
    then commit ``op`` and relay it; returns the stopped relay."""
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    jid = job_id(keys, "c1", "task-1", 1)
    d = relay(pool, keys)
    await d.start()
    try:
        await wait_until(lambda: settled(redis, keys, "c1"))
        await _put_job_in(redis, keys, jid, setup)
        assert await job_state(pool, keys, jid) is status
        await ledger.apply("c1", 1, "u2", [op])
        await wait_until(lambda: settled(redis, keys, "c1"))
    finally:
        await d.stop()
    return d


@pytest.mark.parametrize(("setup", "status"), JOB_SETUPS)
async def test_update_follows_arqs_job_status(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, setup: str, status: JobStatus
) -> None:
    """Active job: the update is delivered and acknowledged. Otherwise: delivered, and the task re-dispatched."""
    jid = job_id(keys, "c1", "task-1", 1)
    d = await _relay_op_on_job_in(redis, ledger, keys, pool, setup, status, UpdateOp("task-1", "aisle seat"))
    updates = await redis.xrange(keys.task("c1", "task-1").updates)
    assert [f[b"text"] for _id, f in updates] == [b"aisle seat"] and d.stats["updates"] == 1
    current = (await redis.hget(keys.task("c1", "task-1").run, "job")).decode()
    if status in ACTIVE_STATES:
        assert d.stats["redispatched"] == 0 and current == jid
    else:
        assert d.stats["redispatched"] == 1 and current == job_id(keys, "c1", "task-1", 2)
        assert job_id(keys, "c1", "task-1", 2) in await queued(redis, keys)


async def test_update_to_a_finished_job_stays_pending_until_redispatched(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """The update is delivered but not acknowledged while the re-dispatch has not happened (here it
    fails: the dispatch counter is not a number), so a relay crash at that point cannot lose it."""
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    tk = keys.task("c1", "task-1")
    outbox = keys.partition(keys.partition_of("c1")).outbox
    d = relay(pool, keys)
    await d.start()
    try:
        await wait_until(lambda: settled(redis, keys, "c1"))
        await _put_job_in(redis, keys, job_id(keys, "c1", "task-1", 1), "complete")
        await redis.hset(tk.run, "dispatch", "not a number")  # HINCRBY fails: the relay retries
        await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "aisle seat")])
        await wait_until(lambda: _errors(d, 2))
        assert (await redis.xpending(outbox, GROUP))["pending"] == 1
        assert len(await redis.xrange(tk.updates)) == 1  # delivered (the next job reads it), once
        await redis.hset(tk.run, "dispatch", 1)
        await wait_until(lambda: settled(redis, keys, "c1"))
    finally:
        await d.stop()
    assert d.stats["redispatched"] == 1 and d.stats["duplicate_updates"] >= 1
    assert await redis.hget(tk.run, "job") == job_id(keys, "c1", "task-1", 2).encode()
    assert len(await redis.xrange(tk.updates)) == 1


async def _errors(d: Dispatcher, n: int) -> bool:
    return d.stats["redis_errors"] >= n


@pytest.mark.parametrize(("setup", "status"), JOB_SETUPS)
async def test_cancel_follows_arqs_job_status(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, setup: str, status: JobStatus
) -> None:
    """Only a job that will still run gets an abort marker (a stale one would abort the id's next job)."""
    jid = job_id(keys, "c1", "task-1", 1)
    d = await _relay_op_on_job_in(redis, ledger, keys, pool, setup, status, CancelOp("task-1", "changed my mind"))
    marker = await redis.zscore(abort_jobs_ss, jid)
    if status in ACTIVE_STATES:
        assert d.stats["aborted"] == 1 and marker is not None and abs(marker / 1000 - time.time()) < 60
    else:
        assert d.stats["cancel_no_job"] == 1 and marker is None
    assert 0 < await redis.ttl(keys.task("c1", "task-1").run) <= 86_400


async def test_update_behind_a_later_entry_is_still_delivered(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """An update whose outbox id is below the stream's top (claimed out of order) gets a new id, once."""
    await ledger.apply("c1", 0, "u1", [StartOp("a")])
    await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "window seat")])
    updates = keys.task("c1", "task-1").updates
    await redis.xadd(updates, {"text": "from the future", "turn": "x", "lv": 9}, id="99999999999999-0")
    d = await relay_until_settled(redis, pool, keys)
    texts = [f[b"text"] for _id, f in await redis.xrange(updates)]
    assert texts == [b"from the future", b"window seat"] and d.stats["updates"] == 1


async def test_malformed_entry_goes_to_dead_letters(redis: Redis, keys: Keys, pool: ArqRedis) -> None:
    pk = keys.partition(0)
    await redis.xadd(pk.outbox, {"kind": "explode", "conv": "c1"})
    d = relay(pool, keys)
    await d.start()
    try:
        await wait_until(lambda: redis.xlen(pk.dead))
    finally:
        await d.stop()
    (_id, fields), *_ = await redis.xrange(pk.dead)
    assert b"malformed outbox" in fields[b"reason"] and d.stats["malformed"] == 1
    assert not d.failed.is_set()


async def test_set_partitions_and_idempotent_stop(keys: Keys, pool: ArqRedis) -> None:
    d = Dispatcher(pool, keys, consumer="x", partitions=[0], block_ms=50)
    await d.start()
    assert d.partitions == {0}
    await d.set_partitions([1, 2])
    assert d.partitions == {1, 2}
    await d.stop()
    await d.stop()
    assert d.partitions == set()


async def test_outbox_is_trimmed_behind_the_relay(redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis) -> None:
    """Acknowledged entries are dropped; pending ones (a dead relay's) are kept until handled."""
    outbox = keys.partition(keys.partition_of("c1")).outbox
    for v in range(300):  # enough for XTRIM ~ to drop whole stream nodes (100 entries each)
        await ledger.apply("c1", v, f"u{v}", [StartOp(f"job {v}")])
    await redis.xgroup_create(outbox, GROUP, id="0", mkstream=True)
    held = await redis.xreadgroup(GROUP, "dead-relay", {outbox: ">"}, count=150)
    d = relay(pool, keys, "relay-a", claim_idle_ms=60_000)  # does not claim the dead relay's entries
    await d.start()
    try:
        await wait_until(lambda: _lag_zero(redis, outbox))
        await d.stop()
        assert await redis.xlen(outbox) == 300  # nothing before the oldest pending entry may go
        await redis.xack(outbox, GROUP, *[eid for eid, _f in held[0][1]])
        d = relay(pool, keys, "relay-b", claim_idle_ms=60_000)
        await d.start()
        await wait_until(lambda: _shorter(redis, outbox, 300))
    finally:
        await d.stop()
    assert d.stats["trimmed"] >= 100
    assert len(await queued(redis, keys)) == 150  # the relay's own 150 (the dead relay's were never enqueued)


async def _lag_zero(redis: Redis, outbox: str) -> bool:
    groups = await redis.xinfo_groups(outbox)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 150


async def _shorter(redis: Redis, outbox: str, n: int) -> bool:
    return bool(await redis.xlen(outbox) < n)


@both_ways_in
async def test_relay_recreates_a_vanished_group(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis, fed: bool
) -> None:
    d = relay(pool, keys, fed=fed)
    await d.start()
    try:
        outbox = keys.partition(keys.partition_of("c1")).outbox
        await redis.delete(outbox)  # what a Redis restart without persistence looks like to the relay
        await ledger.apply("c1", 0, "u1", [StartOp("after the restart")])
        await wait_until(lambda: settled(redis, keys, "c1"))
    finally:
        await d.stop()
    assert await queued(redis, keys) == [job_id(keys, "c1", "task-1", 1)]
    assert d.stats["redis_errors"] >= 1 and not d.failed.is_set()


async def _polled(d: Dispatcher, times: int) -> bool:
    return d.stats["polls"] >= times


def quiet_fed_relay(pool: ArqRedis, keys: Keys, partition: int) -> Dispatcher:
    """A hosted relay of one partition whose own reads, after its start-up ones, are a minute away."""
    return Dispatcher(
        pool, keys, consumer="relay-a", partitions=[partition], block_ms=60_000, claim_idle_ms=60_000, fed=True
    )


async def started_quiet_fed_relay(pool: ArqRedis, keys: Keys, partition: int) -> Dispatcher:
    """:func:`quiet_fed_relay`, started, once its start-up reads (own pending, then unread) are done."""
    d = quiet_fed_relay(pool, keys, partition)
    await d.start()
    await wait_until(lambda: _polled(d, 2))
    return d


async def test_fed_relay_takes_its_entries_from_the_commits(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """Hosted: each commit hands its entries over; the relay needs no read of its own for them."""
    p = keys.partition_of("c1")
    d = await started_quiet_fed_relay(pool, keys, p)
    try:
        for v, op in enumerate([StartOp("a"), StartOp("b"), UpdateOp("task-2", "faster"), CancelOp("task-1", "no")]):
            result = await ledger.apply("c1", v, f"u{v}", [op], relay=d.relay)
            assert len(result.delivered) == 1
            d.deliver(p, result.delivered)
        await wait_until(lambda: settled(redis, keys, "c1"))
    finally:
        await d.stop()
    assert d.stats["fed"] == 4 and d.stats["polls"] == 2
    assert d.stats["enqueued"] == 2 and d.stats["updates"] == 1 and d.stats["aborted"] == 1
    assert sorted(await queued(redis, keys)) == [job_id(keys, "c1", "task-1", 1), job_id(keys, "c1", "task-2", 1)]


async def test_fed_relay_reads_what_was_handed_over_while_it_was_not_running(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """A commit read the entry for the relay's consumer before its loop ran: the hand-over finds no
    loop, the entry waits in the consumer's pending list, and the loop reads it there when it starts."""
    outbox = keys.partition(keys.partition_of("c1")).outbox
    await redis.xgroup_create(outbox, GROUP, id="0", mkstream=True)
    d = quiet_fed_relay(pool, keys, keys.partition_of("c1"))
    result = await ledger.apply("c1", 0, "u1", [StartOp("a")], relay=d.relay)
    d.deliver(keys.partition_of("c1"), result.delivered)
    assert d.stats["fed"] == 0 and (await redis.xinfo_groups(outbox))[0]["pending"] == 1
    await run_until_settled(redis, keys, d)
    assert await queued(redis, keys) == [job_id(keys, "c1", "task-1", 1)]
    assert d.stats["enqueued"] == 1 and d.stats["duplicates"] == 0


async def test_fed_relay_finishes_what_was_handed_over_when_stopped(
    redis: Redis, ledger: Ledger, keys: Keys, pool: ArqRedis
) -> None:
    """Entries handed over just before ``stop()`` are relayed, not left for a claim seconds later."""
    p = keys.partition_of("c1")
    d = await started_quiet_fed_relay(pool, keys, p)
    handed = []
    for v in range(3):
        handed += (await ledger.apply("c1", v, f"u{v}", [StartOp(f"job {v}")], relay=d.relay)).delivered
    d.deliver(p, handed)
    await d.stop()  # retires the loop at once: no step of it ran since the hand-over
    assert d.stats["enqueued"] == 3
    assert await settled(redis, keys, "c1")


def test_periodic_work_of_the_relay_loops_is_spread_over_the_period() -> None:
    """Loops started together claim, trim and poll at different moments (one phase per partition),
    each once per period, on a grid that does not drift however late a loop gets round to it."""
    start, every = 100.0, 2.5
    firsts = sorted(next_due(start, start, every, p) for p in range(PHASES))
    assert len(set(firsts)) == PHASES  # 16 partitions, 16 different moments
    assert all(start < due <= start + every for due in firsts)
    assert firsts[0] == start + every / PHASES and firsts[-1] == start + every
    for p in (0, 5, 21):
        due = next_due(start, start, every, p)
        later = [due := next_due(due + lag, start, every, p) for lag in (0.0, 0.01, 1.3, 0.0, 2.4)]
        phase = (p % PHASES) / PHASES
        for t in later:
            k = (t - start) / every - phase
            assert abs(k - round(k)) < 1e-9  # on the partition's own grid
        # always strictly after the moment asked about, never more than one period after it
        assert next_due(start + 7.0, start, every, p) - (start + 7.0) <= every
        assert next_due(start + 7.0, start, every, p) > start + 7.0
