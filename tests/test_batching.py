"""The Coalescer against real Redis: requests of one event-loop iteration go as one pipeline, each
caller gets its own result or error, a cancelled caller is dropped, and a lone request is not held."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from ledger import ApplyCall, Keys, Ledger, NoteOp, StartOp, UnknownTask, UpdateOp
from orchestrator.batching import Coalescer


def _start(conv: str, turn: str) -> ApplyCall:
    return ApplyCall(conv, None, turn, [StartOp(f"task of {turn}")])


async def test_one_iteration_one_pipeline_and_results_to_their_callers(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    coalescer = Coalescer(ledger)
    calls = [_start(f"b{i % 7}", f"t{i}") for i in range(40)]
    bad = ApplyCall("b0", None, "bad", [UpdateOp("task-99", "nope")])
    results = await asyncio.gather(*(coalescer.apply(c) for c in [*calls, bad]), return_exceptions=True)
    assert coalescer._applies.batches == 1 and coalescer._applies.items == 41
    assert isinstance(results[-1], UnknownTask)  # the failing call's error, only to its caller
    for call, result in zip(calls, results[:-1], strict=True):
        assert not isinstance(result, BaseException)
        assert result.created  # each caller got the result of its own apply
        snap = await ledger.snapshot(call.conversation_id)
        assert any(t.created_by_turn == call.turn_id for t in snap.tasks)
    snaps = await asyncio.gather(*(coalescer.snapshot(f"b{i}") for i in range(7)))
    assert coalescer._snapshots.batches == 1
    assert sum(len(s.tasks) for s in snaps) == 40


async def test_a_full_batch_goes_at_once_and_the_rest_follows(redis: Redis, keys: Keys) -> None:
    coalescer = Coalescer(Ledger(redis, keys), limit=16)
    results = await asyncio.gather(*(coalescer.apply(_start("full", f"f{i}")) for i in range(40)))
    assert [r.version for r in sorted(results, key=lambda r: r.version)] == list(range(1, 41))
    assert coalescer._applies.items == 40 and coalescer._applies.batches == 3  # 16 + 16 + 8


async def test_a_cancelled_caller_is_dropped_before_sending(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys)
    coalescer = Coalescer(ledger)
    kept = asyncio.ensure_future(coalescer.apply(ApplyCall("cx", None, "kept", [NoteOp("")])))
    dropped = asyncio.ensure_future(coalescer.apply(ApplyCall("cx", None, "dropped", [NoteOp("")])))
    await asyncio.sleep(0)  # both queued
    dropped.cancel()
    assert (await kept).version == 1
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert not await ledger.was_applied("cx", "dropped")


async def test_a_lone_request_is_sent_at_once(redis: Redis, keys: Keys) -> None:
    coalescer = Coalescer(Ledger(redis, keys))
    for i in range(50):
        await coalescer.apply(_start("lone", f"l{i}"))
    # 50 sequential applies: each its own pipeline (none waits for company that never comes)
    assert coalescer._applies.batches == 50 and coalescer._applies.items == 50
