"""The orchestrator loop in-process against real Redis: ordering, events, failures of the router."""

from __future__ import annotations

import asyncio

import msgspec
from redis.asyncio import Redis

from intent.backend import Decision, DecisionRequest
from intent.contract import Reply
from ledger import DecisionEvent, Keys, Ledger, NoteOp, TaskStatus
from ledger.turns import Publisher, make_turn
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.turn_processor import TurnRecord
from tests.orch_support import (
    JitterRouter,
    applied_total,
    assert_exactly_once,
    loop_settings,
    pending_total,
    wait_until,
)


async def _decisions(redis: Redis, keys: Keys) -> list[DecisionEvent]:
    out: list[DecisionEvent] = []
    for pk in keys.all_partitions():
        out += [msgspec.json.decode(f[b"data"], type=DecisionEvent) for _id, f in await redis.xrange(pk.decisions)]
    return out


async def test_ordering_200_conversations_x_20_turns(redis_url: str, prefix: str, redis: Redis) -> None:
    """Every conversation's turns commit in publish order, each once. The router takes a random
    0-5 ms per decision, so turns the loop did not keep in order would finish out of order."""
    settings = loop_settings(redis_url, prefix, max_in_flight=256)
    keys = settings.keys()
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, JitterRouter(max_ms=5), observer=records.append)
    await orch.start()
    publisher = Publisher(redis, keys)
    convs = [f"order-{c}" for c in range(200)]
    expected: dict[str, list[str]] = {c: [f"{c}-t{i}" for i in range(20)] for c in convs}

    async def publish_conversation(conv: str) -> None:
        for i, turn_id in enumerate(expected[conv]):
            content = "start: job" if i == 3 else f"message {i}"
            await publisher.publish(make_turn(conv, content, turn_id=turn_id))

    try:
        await asyncio.gather(*(publish_conversation(c) for c in convs))  # concurrently, while the loop runs
        await wait_until(lambda: _done(redis, keys, convs), 60, "all 4000 turns applied", every=0.1)
    finally:
        await orch.stop()
    ledger = Ledger(redis, keys)
    await assert_exactly_once(ledger, expected)
    assert len(records) == 4000 and not any(r.duplicate for r in records)
    by_conv: dict[str, list[str]] = {}
    for r in records:
        by_conv.setdefault(r.conversation_id, []).append(r.turn_id)
    assert by_conv == expected  # commit order per conversation == publish order
    assert await pending_total(redis, keys) == 0
    snap = await ledger.snapshot("order-7")
    assert [t.status for t in snap.tasks] == [TaskStatus.PENDING]


async def _done(redis: Redis, keys: Keys, convs: list[str]) -> bool:
    return await applied_total(redis, keys, convs) == 20 * len(convs)


async def test_task_event_applies_lifecycle_then_routes(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    backend = ScriptedBackend()
    orch = Orchestrator(settings, backend)
    await orch.start()
    try:
        await publisher.publish(make_turn("ev", "start: book a table", turn_id="u1"))
        await publisher.publish(make_turn("ev", "on it", role="tool", task_id="task-1", event="started", turn_id="e1"))
        await publisher.publish(make_turn("ev", "table at 8", role="tool", task_id="task-1", event="completed",
                                          turn_id="e2"))  # fmt: skip
        # refused: the task is closed now; recorded, not routed
        await publisher.publish(make_turn("ev", "late", role="tool", task_id="task-1", event="progress", turn_id="e3"))
        await publisher.publish(make_turn("ev", "said hi", role="assistant", turn_id="a1"))
        await wait_until(lambda: _applied(ledger, "ev", 5), 20, "5 turns")
    finally:
        await orch.stop()
    snap = await ledger.snapshot("ev")
    task = snap.task("task-1")
    assert task is not None and task.status is TaskStatus.COMPLETED and task.result == "table at 8"
    audit = await ledger.audit("ev")
    assert [(e.turn_id, e.op) for e in audit] == [
        ("u1", "start"), ("e1", "event"), ("e1", "note"), ("e2", "event"), ("e2", "note"), ("e3", "note"),
        ("a1", "note"),
    ]  # fmt: skip
    refused = next(e for e in audit if e.turn_id == "e3")
    assert refused.reason is not None and refused.reason.startswith("event_refused: task task-1 is completed")
    assert backend.calls == 3  # u1, e1, e2 routed; e3 (refused) and a1 (assistant) were not
    assert [m.turn_id for m in snap.transcript] == ["u1", "e1", "e2", "e3", "a1"]


async def _applied(ledger: Ledger, conv: str, n: int) -> bool:
    return (await ledger.snapshot(conv)).applied_turns >= n


async def test_router_failures_commit_undecided_noop(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix, decision_timeout_ms=200)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    cases = {"f1": "raise: tier down", "f2": "sleep: 5", "f3": "undecided", "f4": "crash: bug",
             "f5": "update: task-9: no such task", "f6": "start:", "ok": "fine"}  # fmt: skip
    try:
        for turn_id, content in cases.items():
            await publisher.publish(make_turn("fail", content, turn_id=turn_id))
        await wait_until(lambda: _applied(ledger, "fail", len(cases)), 20, "all failure turns")
    finally:
        await orch.stop()
    events = {e.turn_id: e for e in await _decisions(redis, keys)}
    kinds = {"f1": "backend_error", "f2": "timeout", "f3": "undecided", "f4": "error", "f5": "invalid", "f6": "invalid"}
    for turn_id, kind in kinds.items():
        ev = events[turn_id]
        assert (ev.action, ev.reason, ev.tier) == ("noop", "undecided", None), ev
        assert ev.path[-1]["outcome"] == "decision_failed" and str(ev.path[-1]["detail"]).startswith(kind), ev.path
    assert events["ok"].action == "reply" and events["ok"].reason is None  # the loop kept going
    audit = {e.turn_id: e for e in await ledger.audit("fail")}
    assert audit["f2"].reason == "undecided" and audit["f2"].action == "noop"
    assert await pending_total(redis, keys) == 0
    failures = orch.metrics.registry.get_sample_value("sraq_decision_failures_total", {"kind": "timeout"})
    assert failures == 1.0


class _Meddler:
    """A router that writes to the ledger behind the loop's back before answering (version conflicts)."""

    name = "meddler"

    def __init__(self, ledger: Ledger, times: int) -> None:
        self.ledger = ledger
        self.times = times
        self.calls = 0

    async def decide(self, request: DecisionRequest) -> Decision:
        self.calls += 1
        if self.calls <= self.times:
            await self.ledger.apply(request.conversation_id, None, f"meddle-{self.calls}", [NoteOp("x")])
        return Decision(intent=Reply("ok"), confidence=0.9, tier="meddler", latency_ms=0.1)

    async def aclose(self) -> None:
        return None


async def test_version_conflict_redecides_then_gives_up(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix, conflict_retries=2)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    # two conflicts, then a clean decision: committed as the third decision
    meddler = _Meddler(ledger, times=2)
    orch = Orchestrator(settings, meddler)
    await orch.start()
    try:
        await publisher.publish(make_turn("cas", "hello", turn_id="t1"))
        await wait_until(lambda: _applied(ledger, "cas", 3), 20, "t1 after 2 meddles")
        assert meddler.calls == 3
        assert orch.metrics.registry.get_sample_value("sraq_version_conflicts_total") == 2.0
        # always meddling: 1 + 2 re-decisions, then an undecided noop whatever the version
        meddler.times = 100
        await publisher.publish(make_turn("cas", "again", turn_id="t2"))
        await wait_until(lambda: ledger.was_applied("cas", "t2"), 20, "t2")
    finally:
        await orch.stop()
    assert meddler.calls == 6
    t2 = next(e for e in await ledger.audit("cas") if e.turn_id == "t2")
    assert t2.reason == "undecided" and t2.raw is not None and t2.raw.startswith("conflict")


async def test_loop_and_relay_over_a_unix_socket(prefix: str) -> None:
    """A Redis on the same host is best reached over its Unix socket (no TCP stack per round trip)."""
    from orchestrator.local_redis import LocalRedis
    from tests.orch_support import wait_until

    with LocalRedis(appendonly=False) as server:
        url = server.unix_url
        assert url is not None and url.startswith("unix://")
        settings = loop_settings(url, prefix)
        keys = settings.keys()
        redis = Redis.from_url(url)
        orch = Orchestrator(settings, ScriptedBackend())
        await orch.start()
        try:
            publisher = Publisher(redis, keys)
            await publisher.publish(make_turn("unix", "start: book a table", turn_id="u1"))
            await publisher.publish(make_turn("unix", "hello", turn_id="u2"))
            ledger = Ledger(redis, keys)

            async def committed() -> bool:
                return (await ledger.snapshot("unix")).applied_turns == 2

            await wait_until(committed, 15, "two turns over the Unix socket")
            # the hosted relay (arq over the same socket) handed the task to the queue
            queued = await redis.zcard(keys.queue)
            assert queued == 1
        finally:
            await orch.stop()
            await redis.aclose()


async def test_waiting_readers_survive_redis_losing_its_scripts(redis_url: str, prefix: str, redis: Redis) -> None:
    """A reader waits for entries with the fenced read sent in the same write (EVALSHA of a script
    loaded earlier). Redis restarted without its script cache answers NOSCRIPT: the reader loads the
    script and reads; no turn is lost or left pending, and it keeps working after."""
    settings = loop_settings(redis_url, prefix)
    keys = settings.keys()
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, ScriptedBackend(), observer=records.append)
    await orch.start()
    publisher = Publisher(redis, keys)
    convs = [f"flush-{c}" for c in range(8)]  # spread over partitions: several readers wait at once

    async def applied(conversations: list[str], each: int) -> bool:
        return await applied_total(redis, keys, conversations) == each * len(conversations)

    try:
        await publisher.publish_many([make_turn(c, "hello", turn_id=f"{c}-a") for c in convs])
        await wait_until(lambda: applied(convs, 1), 10, "first turns applied")
        await asyncio.sleep(0.3)  # every reader is now blocked in its wait, its read queued behind it
        await redis.script_flush()
        for c in convs:
            await publisher.publish(make_turn(c, "again", turn_id=f"{c}-b"))
        await wait_until(lambda: applied(convs, 2), 10, "turns after the flush applied")
        # handled in the reader itself: no partition was aborted and taken again meanwhile
        assert orch.metrics.registry.get_sample_value("sraq_lease_losses_total") == 0.0
    finally:
        await orch.stop()
    assert sorted(r.turn_id for r in records) == sorted(f"{c}-{t}" for c in convs for t in "ab")
    assert await pending_total(redis, keys) == 0
