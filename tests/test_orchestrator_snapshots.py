"""The orchestrator's snapshot cache: after any mix of turns it equals what Redis holds, and a write it
did not see (an unfenced ``Ledger.apply``) never leads to a decision on stale state."""

from __future__ import annotations

from redis.asyncio import Redis

from intent import ChatMessage
from ledger import Ledger, LedgerSnapshot, StartOp, TaskStatus
from ledger.turns import Publisher, make_turn
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.snapshots import View
from orchestrator.turn_processor import TurnRecord
from tests.orch_support import loop_settings, wait_until


def _script() -> list[tuple[str, str, dict[str, str]]]:
    """(role, content, extra) turns touching every path that changes a snapshot."""
    return [
        ("user", "start: find flights", {}),
        ("user", "hello there", {}),  # reply: the transcript gains the user turn and the reply
        ("user", "start: book a hotel", {}),
        ("tool", "on it", {"task_id": "task-1", "event": "started"}),
        ("user", "update: task-2: near the beach", {}),
        ("tool", "50%", {"task_id": "task-2", "event": "progress"}),
        ("assistant", "still looking", {}),
        ("user", "noop", {}),
        ("user", "undecided", {}),  # fallback commit without a version check
        ("user", "raise: tier down", {}),
        ("user", "update: task-9: no such task", {}),  # invalid against the ledger
        ("tool", "found one", {"task_id": "task-1", "event": "completed"}),
        ("tool", "late", {"task_id": "task-1", "event": "progress"}),  # refused: task-1 is closed
        ("user", "cancel: task-2: not needed", {}),
        ("user", "start: rent a car", {}),
        *[("user", f"message {i}", {}) for i in range(8)],  # past transcript_max: trimming
    ]


def _same(view: View, fresh: LedgerSnapshot) -> None:
    assert view.snapshot == fresh
    assert view.chat == tuple(ChatMessage(role=m.role, content=m.content) for m in fresh.transcript)


async def test_cache_equals_redis_after_every_kind_of_turn(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix, transcript_max=7)
    keys = settings.keys()
    ledger = Ledger(redis, keys, transcript_max=7)
    publisher = Publisher(redis, keys)
    convs = [f"snap-{c}" for c in range(6)]
    script = _script()
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    try:
        for i, (role, content, extra) in enumerate(script):
            for conv in convs:
                turn = make_turn(conv, content, role=role, turn_id=f"{conv}-{i}", **extra)  # type: ignore[arg-type]
                await publisher.publish(turn)

        async def applied() -> bool:
            snaps = [await ledger.snapshot(c) for c in convs]
            return all(s.applied_turns == len(script) for s in snaps)

        await wait_until(applied, 30, "every turn applied")
        cache = orch.processor.cache
        for conv in convs:
            fresh = await ledger.snapshot(conv)
            view = cache.peek(conv)
            assert view is not None, conv
            _same(view, fresh)
            assert [(t.id, t.status) for t in fresh.tasks] == [
                ("task-1", TaskStatus.COMPLETED),
                ("task-2", TaskStatus.CANCELLED),
                ("task-3", TaskStatus.PENDING),
            ]
            assert len(fresh.transcript) == 7
        # the cache did its job: most user turns did not read the ledger
        assert cache.hits > cache.misses
    finally:
        await orch.stop()


async def test_unseen_write_is_never_decided_on(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    publisher = Publisher(redis, keys)
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, ScriptedBackend(), observer=records.append)
    await orch.start()
    try:
        await publisher.publish(make_turn("ext", "start: find flights", turn_id="u1"))
        await publisher.publish(make_turn("ext", "hello", turn_id="u2"))
        await wait_until(lambda: _count(records, 2), 10, "two turns")
        assert orch.processor.cache.peek("ext") is not None
        # a writer outside the orchestrator (no fencing token) opens task-2 behind the cache's back
        before = await ledger.snapshot("ext")
        await ledger.apply("ext", before.version, "outside-1", [StartOp("book a hotel")])
        # decided on the cached view this names an unknown task, so it must be re-decided on a fresh read
        await publisher.publish(make_turn("ext", "update: task-2: sea view", turn_id="u3"))
        # and this one commits against a version that moved: conflict, fresh read, re-decision
        await ledger.apply("ext", None, "outside-2", [StartOp("rent a car")])
        await publisher.publish(make_turn("ext", "hi again", turn_id="u4"))
        await wait_until(lambda: _count(records, 4), 10, "four turns")
    finally:
        await orch.stop()
    by_turn = {r.turn_id: r for r in records}
    assert by_turn["u3"].action == "update_task" and by_turn["u3"].reason is None
    assert by_turn["u4"].action == "reply"
    fresh = await ledger.snapshot("ext")
    assert fresh.task("task-2") is not None and fresh.task("task-2").last_update == "sea view"  # type: ignore[union-attr]
    view = orch.processor.cache.peek("ext")
    assert view is not None
    _same(view, fresh)


async def _count(records: list[TurnRecord], n: int) -> bool:
    return len(records) >= n
