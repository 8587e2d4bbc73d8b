"""Workers end to end: real Redis, real ``sraq workers`` subprocesses, the relay, the ledger.

The orchestrator applies task-event turns to the ledger; here ``apply_events`` does that step so the
worker side is tested on its own (tests/test_workers_orchestrator.py runs the real orchestrator).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from arq.jobs import Job, JobStatus
from redis.asyncio import Redis

from ledger import CancelOp, EventOp, Keys, Ledger, StaleAttempt, StartOp, TaskClosed, TaskEvent, TaskStatus, UpdateOp
from ledger.turns import Turn
from tests.workers_support import Procs, apply_events, kinds, task_events, wait_until, wait_workers
from workers.dispatcher import Dispatcher
from workers.queue import create_pool, job, job_id

FAST = {"SRAQ_WORKER_POLL_DELAY_S": "0.01", "SRAQ_TASK_RETRY_BACKOFF_S": "0.1"}


@pytest.fixture
def procs(redis_url: str, keys: Keys) -> Iterator[Procs]:
    p = Procs(redis_url, keys, **FAST)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def pool(redis_url: str, keys: Keys) -> AsyncIterator[ArqRedis]:
    arq_pool = create_pool(redis_url, keys)
    try:
        yield arq_pool
    finally:
        await arq_pool.aclose()


@pytest.fixture
async def relay(pool: ArqRedis, keys: Keys) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(pool, keys, consumer="test-relay", block_ms=200, claim_idle_ms=500)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
    assert not d.failed.is_set(), d.error


async def events_until(
    redis: Redis, keys: Keys, conv: str, want: set[str], task: str | None = None, within: float = 10
) -> list[Turn]:
    """Wait until the task events of ``conv`` include every ``event@attempt`` (or ``event``) in ``want``."""

    async def seen() -> bool:
        got = {f"{e}@{a}" for e, a in kinds(await task_events(redis, keys, conv, task))}
        got |= {k.split("@")[0] for k in got}
        return want <= got

    await wait_until(seen, within)
    return await task_events(redis, keys, conv, task)


async def test_three_tasks_run_concurrently(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    procs.worker(SRAQ_DEMO_STEPS="2", SRAQ_DEMO_STEP_S="0.5")  # each task takes ~1 s
    await wait_workers(redis, 1)
    t0 = time.time()
    for i in range(3):
        await ledger.apply("c1", i, f"u{i}", [StartOp(f"job {i}")])
    await wait_until(lambda: _count(redis, keys, "c1", TaskEvent.COMPLETED, 3), within=10)
    wall = time.time() - t0
    events = await task_events(redis, keys, "c1")
    started = {e.task_id: e.ts for e in events if e.event is TaskEvent.STARTED}
    done = {e.task_id: e.ts for e in events if e.event is TaskEvent.COMPLETED}
    assert set(started) == set(done) == {"task-1", "task-2", "task-3"}
    # concurrency, independent of speed: every task started before any finished
    assert max(started.values()) < min(done.values())
    assert wall < 3.0, f"3 x 1 s tasks took {wall:.2f}s"
    await apply_events(ledger, events)
    snap = await ledger.snapshot("c1")
    assert [t.status for t in snap.tasks] == [TaskStatus.COMPLETED] * 3
    assert snap.task("task-2") is not None and snap.task("task-2").result == "done: job 1"  # type: ignore[union-attr]


async def _count(redis: Redis, keys: Keys, conv: str, event: TaskEvent, n: int) -> bool:
    return sum(e.event is event for e in await task_events(redis, keys, conv)) >= n


async def test_update_reaches_running_handler(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    procs.worker("--handler", "tests.task_handlers:first_update")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("find flights")])
    await events_until(redis, keys, "c1", {"started@1"})
    await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "only direct flights")])
    events = await events_until(redis, keys, "c1", {"completed@1"})
    assert events[-1].content == "got update: only direct flights"
    assert relay.stats["redispatched"] == 0  # delivered to the running job, not re-dispatched


async def test_cancel_stops_running_handler(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher, pool: ArqRedis
) -> None:
    procs.worker("--handler", "tests.task_handlers:wait_for_cancel")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("long job")])
    await events_until(redis, keys, "c1", {"progress@1"})
    t_cancel = time.time()
    await ledger.apply("c1", 1, "u2", [CancelOp("task-1", "stop it")])
    run_key = keys.task("c1", "task-1").run
    await wait_until(lambda: redis.hexists(run_key, "stopped_at"), within=5)
    stopped = float(await redis.hget(run_key, "stopped_at"))
    assert 0 < stopped - t_cancel < 2.0  # one poll delay (10 ms) in practice; loose bound on a busy box
    assert 0 < await redis.ttl(run_key) <= 86_400  # a closed task's worker-side keys expire
    info = await job(pool, keys, job_id(keys, "c1", "task-1", 1)).result_info()
    assert info is not None and info.success is False  # arq recorded an abort
    events = await task_events(redis, keys, "c1")
    assert kinds(events) == [("started", 1), ("progress", 1)]  # no completed/failed from a cancelled run
    results = await apply_events(ledger, events)
    assert all(isinstance(err, TaskClosed) for _t, err in results)  # the ledger already says cancelled
    task = (await ledger.snapshot("c1")).task("task-1")
    assert task is not None and task.status is TaskStatus.CANCELLED
    with pytest.raises(TaskClosed):  # a late result of the cancelled attempt is refused
        await ledger.apply("c1", None, "late", [EventOp("task-1", TaskEvent.COMPLETED, text="late", attempt=1)])


async def test_worker_killed_mid_job_reruns_with_next_attempt(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    env = {"SRAQ_TASK_TIMEOUT_S": "2"}  # in-progress expiry = 2 + 3 s
    first = procs.worker("--handler", "tests.task_handlers:hang_first", **env)
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("fragile job")])
    await events_until(redis, keys, "c1", {"started@1"})
    procs.kill(first)
    procs.worker("--handler", "tests.task_handlers:hang_first", **env)
    events = await events_until(redis, keys, "c1", {"completed@2"}, within=20)
    assert kinds(events) == [("started", 1), ("started", 2), ("completed", 2)]
    # the ledger follows the attempts; an event of the dead attempt 1 arriving late is refused
    await apply_events(ledger, events[:2])
    with pytest.raises(StaleAttempt):
        await ledger.apply("c1", None, "zombie", [EventOp("task-1", TaskEvent.PROGRESS, text="still here", attempt=1)])
    await apply_events(ledger, events[2:])
    task = (await ledger.snapshot("c1")).task("task-1")
    assert task is not None and task.status is TaskStatus.COMPLETED
    assert task.attempt == 2 and task.result == "finished on attempt 2"


async def test_failing_handler_retries_then_fails(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    procs.worker("--handler", "tests.task_handlers:fail_always", SRAQ_TASK_MAX_TRIES="3")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("doomed")])
    events = await events_until(redis, keys, "c1", {"failed@3"})
    assert kinds(events) == [
        ("started", 1), ("progress", 1), ("started", 2), ("progress", 2), ("started", 3), ("failed", 3)
    ]  # fmt: skip
    assert "retrying in 0.1s" in events[1].content and "retrying in 0.2s" in events[3].content
    assert events[-1].content == "RuntimeError: boom on attempt 3"
    await apply_events(ledger, events)
    task = (await ledger.snapshot("c1")).task("task-1")
    assert task is not None and task.status is TaskStatus.FAILED and task.attempt == 3
    assert 0 < await redis.ttl(keys.task("c1", "task-1").run) <= 86_400


async def test_abort_marker_does_not_hit_reused_id(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    """A marker left in arq:abort for this job id (arq#485) must not abort the new job."""
    await redis.zadd(abort_jobs_ss, {job_id(keys, "c1", "task-1", 1): 1})
    procs.worker(SRAQ_DEMO_STEPS="1", SRAQ_DEMO_STEP_S="0.05")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("unlucky id")])
    events = await events_until(redis, keys, "c1", {"completed@1"})
    assert kinds(events) == [("started", 1), ("completed", 1)]


async def test_update_after_job_ended_redispatches(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher, pool: ArqRedis
) -> None:
    """The job finished but the task is still open in the ledger: an update re-dispatches it."""
    procs.worker(SRAQ_DEMO_STEPS="1", SRAQ_DEMO_STEP_S="0.05")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("draft an email")])
    await events_until(redis, keys, "c1", {"completed@1"})
    # the event is published just before arq records the job as finished; wait for arq too (an update
    # landing in between counts as delivered to the still-running job: no re-dispatch)
    first = job(pool, keys, job_id(keys, "c1", "task-1", 1))
    await wait_until(lambda: _is_complete(first), within=5)
    await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "make it shorter")])
    events = await events_until(redis, keys, "c1", {"completed@2"})
    assert events[-1].content == "done: draft an email (with updates: make it shorter)"
    assert relay.stats["redispatched"] == 1
    assert await redis.hget(keys.task("c1", "task-1").run, "job") == job_id(keys, "c1", "task-1", 2).encode()


async def test_sigterm_lets_running_job_finish(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    worker = procs.worker(SRAQ_DEMO_STEPS="2", SRAQ_DEMO_STEP_S="0.4")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("almost done")])
    await events_until(redis, keys, "c1", {"started@1"})
    code = await asyncio.to_thread(procs.terminate, worker)
    assert code == 0
    events = await task_events(redis, keys, "c1")
    assert kinds(events)[-1] == ("completed", 1)


async def test_relay_killed_under_load_dispatches_each_task_once(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs
) -> None:
    """SIGKILL the relay while tasks are being committed; a restarted relay finishes: one run per task."""
    env = {"SRAQ_DISPATCHER_CLAIM_IDLE_MS": "300"}
    first = procs.spawn("dispatcher", "--consumer", "relay-1", **env)
    convs = [f"conv-{i}" for i in range(6)]

    async def commit(conv: str) -> None:
        for n in range(4):
            await ledger.apply(conv, n, f"{conv}-u{n}", [StartOp(f"{conv} job {n}")])
            await asyncio.sleep(0.01)

    committing = asyncio.gather(*(commit(c) for c in convs))
    await asyncio.sleep(0.3)  # relay start-up, then die somewhere in the middle of the commits
    procs.kill(first)
    await committing
    procs.spawn("dispatcher", "--consumer", "relay-2", **env)
    procs.worker(SRAQ_DEMO_STEPS="1", SRAQ_DEMO_STEP_S="0.01")
    expected = {(c, f"task-{n}") for c in convs for n in range(1, 5)}

    async def all_done() -> bool:
        done = set()
        for c in convs:
            done |= {(c, e.task_id) for e in await task_events(redis, keys, c) if e.event is TaskEvent.COMPLETED}
        return done == expected

    await wait_until(all_done, within=20)
    for c in convs:
        started = [e.task_id for e in await task_events(redis, keys, c) if e.event is TaskEvent.STARTED]
        assert sorted(started) == sorted(t for cc, t in expected if cc == c)  # each task ran exactly once


async def _is_complete(j: Job) -> bool:
    return await j.status() is JobStatus.complete


async def test_health_check_and_clean_exits(redis: Redis, keys: Keys, procs: Procs) -> None:
    """``sraq workers --check`` sees a live pool; SIGTERM ends workers and the relay with exit 0."""

    def check() -> int:
        return procs.spawn("workers", "--check").wait(timeout=30)

    assert await asyncio.to_thread(check) == 1  # nothing running yet
    worker = procs.worker()
    relay_proc = procs.spawn("dispatcher", "--partitions", "0-1")
    await wait_workers(redis, 1)
    await wait_until(lambda: redis.exists(keys.queue + ":health-check"), within=10)
    assert await asyncio.to_thread(check) == 0
    assert await asyncio.to_thread(procs.terminate, worker) == 0
    assert await asyncio.to_thread(procs.terminate, relay_proc) == 0
    assert await asyncio.to_thread(check) == 1  # a stopped pool removes its health record
