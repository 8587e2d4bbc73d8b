"""Workers with the real orchestrator loop (in-process, scripted router) and real worker subprocesses.

The orchestrator decides, commits and relays (its hosted Dispatcher); workers run the tasks and report
events as turns, which the orchestrator applies to the ledger — the whole loop, no stand-ins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from ledger import Keys, Ledger, TaskStatus
from ledger.turns import Publisher, make_turn
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.turn_processor import TurnRecord
from tests.orch_support import loop_settings
from tests.workers_support import Procs, task_events, wait_until, wait_workers


@pytest.fixture
def procs(redis_url: str, prefix: str) -> Iterator[Procs]:
    p = Procs(redis_url, Keys(prefix=prefix, partitions=4), SRAQ_WORKER_POLL_DELAY_S="0.01")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def records(redis_url: str, prefix: str) -> AsyncIterator[list[TurnRecord]]:
    out: list[TurnRecord] = []
    orch = Orchestrator(loop_settings(redis_url, prefix), ScriptedBackend(), observer=out.append)
    await orch.start()
    try:
        yield out
    finally:
        await orch.stop()
    assert orch.failure is None


async def statuses(ledger: Ledger, conv: str) -> list[TaskStatus]:
    return [t.status for t in (await ledger.snapshot(conv)).tasks]


async def test_three_tasks_while_the_conversation_keeps_flowing(
    redis: Redis, prefix: str, procs: Procs, records: list[TurnRecord]
) -> None:
    keys = Keys(prefix=prefix, partitions=4)
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    procs.worker(SRAQ_DEMO_STEPS="2", SRAQ_DEMO_STEP_S="0.5")  # ~1 s per task
    await wait_workers(redis, 1)
    t0 = time.time()
    for name in ("flights", "hotel", "car"):
        await publisher.publish(make_turn("chat-1", f"start: book the {name}"))
    for i in range(6):  # the user keeps talking while the tasks run
        await asyncio.sleep(0.15)
        await publisher.publish(make_turn("chat-1", f"by the way {i}", turn_id=f"chat-{i}"))

    async def all_completed() -> bool:
        return await statuses(ledger, "chat-1") == [TaskStatus.COMPLETED] * 3

    await wait_until(all_completed, within=10)
    wall = time.time() - t0
    events = await task_events(redis, keys, "chat-1")
    started = [e.ts for e in events if e.event is not None and e.event.value == "started"]
    completed = [e.ts for e in events if e.event is not None and e.event.value == "completed"]
    assert len(started) == len(completed) == 3
    assert max(started) < min(completed)  # the three ran at the same time
    assert wall < 3.0, f"3 x 1 s tasks took {wall:.2f}s end to end"
    replies = [r for r in records if r.turn_id.startswith("chat-")]
    assert [r.action for r in replies] == ["reply"] * 6
    answered_meanwhile = [r for r in replies if max(started) < r.committed_at < min(completed)]
    assert answered_meanwhile, "no reply was committed while the tasks were running"
    snap = await ledger.snapshot("chat-1")
    assert [t.result for t in snap.tasks] == [f"done: book the {n}" for n in ("flights", "hotel", "car")]


async def test_update_and_cancel_through_turns(
    redis: Redis, prefix: str, procs: Procs, records: list[TurnRecord]
) -> None:
    keys = Keys(prefix=prefix, partitions=4)
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    procs.worker(SRAQ_DEMO_STEPS="3", SRAQ_DEMO_STEP_S="0.4")
    await wait_workers(redis, 1)
    await publisher.publish(make_turn("chat-2", "start: find flights to Porto"))
    await publisher.publish(make_turn("chat-2", "start: find a hotel"))

    async def both_running() -> bool:
        return await statuses(ledger, "chat-2") == [TaskStatus.RUNNING] * 2

    await wait_until(both_running, within=10)
    await publisher.publish(make_turn("chat-2", "update: task-1: only direct flights"))
    await publisher.publish(make_turn("chat-2", "cancel: task-2: found one myself"))

    async def settled() -> bool:
        return await statuses(ledger, "chat-2") == [TaskStatus.COMPLETED, TaskStatus.CANCELLED]

    await wait_until(settled, within=10)
    snap = await ledger.snapshot("chat-2")
    assert snap.tasks[0].result == "done: find flights to Porto (with updates: only direct flights)"
    await wait_until(lambda: redis.hexists(keys.task("chat-2", "task-2").run, "stopped_at"), within=5)
    hotel = await task_events(redis, keys, "chat-2", "task-2")
    assert all(e.event is not None and e.event.value in ("started", "progress") for e in hotel)


async def test_the_hosted_relay_is_fed_by_the_commits(redis: Redis, redis_url: str, prefix: str) -> None:
    """The orchestrator's commits hand their outbox entries to its relay, which enqueues from there
    (its own polls would also find them, a second later: ``fed`` tells which way they came)."""
    keys = Keys(prefix=prefix, partitions=4)
    orch = Orchestrator(loop_settings(redis_url, prefix), ScriptedBackend())
    await orch.start()
    try:
        relay = orch.dispatcher
        assert relay is not None and relay.fed
        await Publisher(redis, keys).publish_many([make_turn(f"fed-{i}", f"start: job {i}") for i in range(6)])

        async def all_enqueued() -> bool:
            return len(await redis.zrange(keys.queue, 0, -1)) == 6

        await wait_until(all_enqueued, within=10)
        assert relay.stats["fed"] == 6 and relay.stats["enqueued"] == 6
    finally:
        await orch.stop()
    assert orch.failure is None
