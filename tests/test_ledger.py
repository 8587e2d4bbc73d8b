"""Ledger apply: every op, every rejection, idempotency, fencing, ack, audit and outbox (real Redis)."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from ledger import (
    Ack,
    ApplyCall,
    CancelOp,
    DecisionEvent,
    DecisionMeta,
    EventOp,
    InvalidOp,
    Keys,
    LeaseLost,
    Ledger,
    Message,
    NoteOp,
    Relay,
    StaleAttempt,
    StartOp,
    TaskClosed,
    TaskEvent,
    TaskStatus,
    UnknownTask,
    UpdateOp,
    VersionConflict,
)

CONV = "conv-1"


async def test_start_creates_numbered_pending_tasks(ledger: Ledger) -> None:
    r1 = await ledger.apply(CONV, 0, "t1", [StartOp("find flights to Porto")])
    r2 = await ledger.apply(CONV, 1, "t2", [StartOp("book hotel"), StartOp("rent a car")])
    assert (r1.version, r1.created) == (1, ["task-1"])
    assert (r2.version, r2.created) == (2, ["task-2", "task-3"])
    snap = await ledger.snapshot(CONV)
    assert snap.version == 2 and snap.applied_turns == 2
    assert [t.id for t in snap.tasks] == ["task-1", "task-2", "task-3"]
    t1 = snap.task("task-1")
    assert t1 is not None
    assert t1.status is TaskStatus.PENDING and t1.summary == "find flights to Porto"
    assert t1.version == 1 and t1.attempt == 1 and t1.created_by_turn == "t1"


async def test_update_and_cancel_change_open_tasks(ledger: Ledger) -> None:
    await ledger.apply(CONV, 0, "t1", [StartOp("find flights")])
    await ledger.apply(CONV, 1, "t2", [UpdateOp("task-1", "only direct flights")])
    snap = await ledger.snapshot(CONV)
    task = snap.task("task-1")
    assert task is not None
    assert task.last_update == "only direct flights" and task.version == 2 and task.updated_by_turn == "t2"
    await ledger.apply(CONV, 2, "t3", [CancelOp("task-1", "user booked it")])
    task = (await ledger.snapshot(CONV)).task("task-1")
    assert task is not None and task.status is TaskStatus.CANCELLED and task.version == 3


@pytest.mark.parametrize(
    ("events", "final"),
    [
        ([TaskEvent.STARTED, TaskEvent.PROGRESS, TaskEvent.COMPLETED], TaskStatus.COMPLETED),
        ([TaskEvent.STARTED, TaskEvent.FAILED], TaskStatus.FAILED),
        ([TaskEvent.COMPLETED], TaskStatus.COMPLETED),
    ],
)
async def test_lifecycle_events(ledger: Ledger, events: list[TaskEvent], final: TaskStatus) -> None:
    await ledger.apply(CONV, 0, "t0", [StartOp("job")])
    for i, ev in enumerate(events):
        await ledger.apply(CONV, None, f"e{i}", [EventOp("task-1", ev, text=f"text {i}")])
    task = (await ledger.snapshot(CONV)).task("task-1")
    assert task is not None and task.status is final
    if final is TaskStatus.COMPLETED:
        assert task.result == f"text {len(events) - 1}"


@pytest.mark.parametrize("terminal", [TaskEvent.COMPLETED, TaskEvent.FAILED, "cancel"])
async def test_terminal_states_are_final(ledger: Ledger, terminal: TaskEvent | str) -> None:
    await ledger.apply(CONV, 0, "t0", [StartOp("job")])
    close = CancelOp("task-1", "stop") if terminal == "cancel" else EventOp("task-1", TaskEvent(terminal))
    await ledger.apply(CONV, 1, "t1", [close])
    before = await ledger.snapshot(CONV)
    for i, op in enumerate(
        [
            UpdateOp("task-1", "more"),
            CancelOp("task-1", "again"),
            EventOp("task-1", TaskEvent.STARTED),
            EventOp("task-1", TaskEvent.PROGRESS, "late"),
            EventOp("task-1", TaskEvent.COMPLETED, "late result"),
        ]
    ):
        with pytest.raises(TaskClosed) as err:
            await ledger.apply(CONV, None, f"late-{i}", [op])
        assert err.value.task_id == "task-1"
    assert await ledger.snapshot(CONV) == before


async def test_unknown_task_rejected_and_nothing_changes(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await ledger.apply(CONV, 0, "t0", [StartOp("job")])
    before = await ledger.snapshot(CONV)
    outbox_len = await redis.xlen(keys.partition(keys.partition_of(CONV)).outbox)
    # a valid op before the bad one must not be applied either
    with pytest.raises(UnknownTask) as err:
        await ledger.apply(CONV, 1, "t1", [StartOp("other"), UpdateOp("task-9", "x")])
    assert err.value.task_id == "task-9"
    assert await ledger.snapshot(CONV) == before
    assert await redis.xlen(keys.partition(keys.partition_of(CONV)).outbox) == outbox_len
    assert len(await ledger.audit(CONV)) == 1
    assert not await ledger.was_applied(CONV, "t1")


async def test_version_conflict_carries_current_version(ledger: Ledger) -> None:
    await ledger.apply(CONV, 0, "t0", [NoteOp("hi")])
    with pytest.raises(VersionConflict) as err:
        await ledger.apply(CONV, 0, "t1", [NoteOp("stale")])
    assert err.value.current == 1 and err.value.expected == 0


async def test_stale_attempt_refused(ledger: Ledger) -> None:
    await ledger.apply(CONV, 0, "t0", [StartOp("job")])
    await ledger.apply(CONV, None, "e1", [EventOp("task-1", TaskEvent.STARTED, attempt=1)])
    await ledger.apply(CONV, None, "e2", [EventOp("task-1", TaskEvent.STARTED, attempt=2)])
    with pytest.raises(StaleAttempt):
        await ledger.apply(CONV, None, "e3", [EventOp("task-1", TaskEvent.COMPLETED, "old result", attempt=1)])
    task = (await ledger.snapshot(CONV)).task("task-1")
    assert task is not None and task.attempt == 2 and task.status is TaskStatus.RUNNING


async def test_same_turn_twice_applies_once(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    first = await ledger.apply(CONV, 0, "turn-a", [StartOp("job")])
    again = await ledger.apply(CONV, 0, "turn-a", [StartOp("job")])
    also = await ledger.apply(CONV, 7, "turn-a", [UpdateOp("task-1", "ignored")])
    assert not first.duplicate and again.duplicate and also.duplicate
    assert (again.version, again.created, again.touched) == (first.version, first.created, first.touched)
    snap = await ledger.snapshot(CONV)
    assert snap.version == 1 and len(snap.tasks) == 1 and snap.applied_turns == 1
    assert len(await ledger.audit(CONV)) == 1
    assert await redis.xlen(keys.partition(keys.partition_of(CONV)).outbox) == 1


async def test_invalid_ops(ledger: Ledger) -> None:
    with pytest.raises(InvalidOp):
        await ledger.apply(CONV, 0, "t", [])
    with pytest.raises(InvalidOp):
        await ledger.apply(CONV, 0, "", [NoteOp()])
    with pytest.raises(InvalidOp):
        await ledger.apply(CONV, 0, "t", [StartOp("")])


async def test_audit_records_decision_and_before_after(ledger: Ledger) -> None:
    meta = DecisionMeta(action="start_task", tier="embedded", confidence=0.91, latency_ms=1.5, raw="start_task(x)")
    await ledger.apply(CONV, 0, "t0", [StartOp("x")], decision=meta)
    upd = DecisionMeta(action="update_task", tier="sglang", confidence=0.7, latency_ms=80.0)
    await ledger.apply(CONV, 1, "t1", [UpdateOp("task-1", "y")], decision=upd)
    await ledger.apply(CONV, 2, "t2", [NoteOp("hello")], decision=DecisionMeta(action="reply", tier="embedded"))
    trail = await ledger.audit(CONV)
    assert [(e.turn_id, e.op, e.task_id, e.action) for e in trail] == [
        ("t0", "start", "task-1", "start_task"),
        ("t1", "update", "task-1", "update_task"),
        ("t2", "note", None, "reply"),
    ]
    assert trail[0].before is None and trail[0].after is not None and trail[0].raw == "start_task(x)"
    assert trail[1].tier == "sglang" and trail[1].confidence == pytest.approx(0.7)
    assert trail[1].before is not None and trail[1].before.last_update == "queued"
    assert trail[1].after is not None and trail[1].after.last_update == "y"
    assert [e.ledger_version for e in trail] == [1, 2, 3]
    assert [e.turn_id for e in await ledger.audit(CONV, task_id="task-1")] == ["t0", "t1"]
    # ``at`` is epoch milliseconds, the unit of the task times written by the same commit
    assert trail[0].at == float(trail[0].after.created_at) and trail[1].at == float(trail[1].after.updated_at)
    assert abs(trail[2].at - time.time() * 1000) < 60_000


async def test_outbox_entries(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await ledger.apply(CONV, 0, "t0", [StartOp("job")])
    await ledger.apply(CONV, 1, "t1", [UpdateOp("task-1", "faster")])
    await ledger.apply(CONV, 2, "t2", [CancelOp("task-1", "enough")])
    await ledger.apply(CONV, 3, "t3", [NoteOp("reply")])
    entries = await redis.xrange(keys.partition(keys.partition_of(CONV)).outbox)
    got = [(f[b"kind"], f[b"task"], f[b"text"], f[b"attempt"]) for _, f in entries]
    assert got == [
        (b"start", b"task-1", b"job", b"1"),
        (b"update", b"task-1", b"faster", b"1"),
        (b"cancel", b"task-1", b"enough", b"1"),
    ]


async def test_outbox_entries_handed_to_the_relay_in_the_commit(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    """With a relay, the commit reads its new outbox entries for it: returned, and in its pending list."""
    outbox = keys.partition(keys.partition_of(CONV)).outbox
    relay = Relay("dispatcher", "relay-a")
    # no group yet: the commit stands, nothing is read, the entry waits for the relay's own read
    first = await ledger.apply(CONV, 0, "t0", [StartOp("job")], relay=relay)
    assert first.version == 1 and first.delivered == []
    await redis.xgroup_create(outbox, "dispatcher", id="0")
    # every entry no relay has read yet comes along, oldest first: the earlier start, then this update
    second = await ledger.apply(CONV, 1, "t1", [UpdateOp("task-1", "faster")], relay=relay)
    entries = await redis.xrange(outbox)
    assert [eid for eid, _ in second.delivered] == [eid for eid, _ in entries]
    assert [f[b"kind"] for _, f in second.delivered] == [b"start", b"update"]
    assert second.delivered[1][1] == entries[1][1]
    pending = await redis.xpending_range(outbox, "dispatcher", min="-", max="+", count=10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(eid, b"relay-a") for eid, _ in entries]
    # nothing is read for a commit that writes no outbox entry, nor without a relay, nor for a duplicate
    assert (await ledger.apply(CONV, 2, "t2", [NoteOp("hi")], relay=relay)).delivered == []
    assert (await ledger.apply(CONV, 3, "t3", [CancelOp("task-1", "stop")])).delivered == []
    assert (await ledger.apply(CONV, None, "t1", [UpdateOp("task-1", "faster")], relay=relay)).duplicate
    assert len(await redis.xpending_range(outbox, "dispatcher", min="-", max="+", count=10)) == 2
    assert (await redis.xinfo_groups(outbox))[0]["lag"] == 1  # the cancel waits for a relay's own read


async def test_transcript_messages_round_trip_stamped_with_the_commit_time(ledger: Ledger) -> None:
    """Messages go to the script as JSON objects it closes with ``at``: any content comes back as sent."""
    tricky = 'quotes " \\ back\\slash, /slash, "at":0, {braces}, new\nline, ünïcødé ✓, \x00 nul'
    sent = [
        Message(role="user", content=tricky, turn_id="t0"),
        Message(role="tool", content="", turn_id="t0.e", task_id="task-7"),
        Message(role="assistant", content="}", turn_id="t0.reply"),
    ]
    result = await ledger.apply(CONV, 0, "t0", [NoteOp()], messages=sent)
    got = (await ledger.snapshot(CONV)).transcript
    assert got == [
        Message(role=m.role, content=m.content, turn_id=m.turn_id, task_id=m.task_id, at=result.at) for m in sent
    ]
    assert result.at > 0


async def test_transcript_is_capped(ledger: Ledger) -> None:
    for i in range(8):
        await ledger.apply(CONV, i, f"t{i}", [NoteOp()], messages=[Message(role="user", content=f"m{i}")])
    snap = await ledger.snapshot(CONV)
    assert [m.content for m in snap.transcript] == ["m3", "m4", "m5", "m6", "m7"]
    assert all(m.at > 0 for m in snap.transcript)


async def test_fencing_token_and_ack_in_same_step(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    pk = keys.partition(keys.partition_of(CONV))
    await redis.xgroup_create(pk.turns, "g", id="0", mkstream=True)
    eid = await redis.xadd(pk.turns, {"x": "1"})
    await redis.xreadgroup("g", "c1", {pk.turns: ">"})
    await redis.set(pk.lease, "tok-2")
    with pytest.raises(LeaseLost):
        await ledger.apply(CONV, 0, "t0", [NoteOp()], fencing_token="tok-1", ack=Ack(pk.turns, "g", eid.decode()))
    assert (await redis.xpending(pk.turns, "g"))["pending"] == 1
    assert (await ledger.snapshot(CONV)).version == 0
    await ledger.apply(CONV, 0, "t0", [NoteOp()], fencing_token="tok-2", ack=Ack(pk.turns, "g", eid.decode()))
    assert (await redis.xpending(pk.turns, "g"))["pending"] == 0


async def test_decision_event_published_with_version(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    ev = DecisionEvent(
        conversation_id=CONV, turn_id="t0", action="reply", args={"text": "hi"}, tier="embedded",
        confidence=0.9, latency_ms=1.0,
    )  # fmt: skip
    await ledger.apply(CONV, 0, "t0", [NoteOp("hi")], event=ev)
    entries = await redis.xrange(keys.partition(keys.partition_of(CONV)).decisions)
    assert len(entries) == 1
    assert entries[0][1][b"lv"] == b"1" and b'"action":"reply"' in entries[0][1][b"data"]


async def test_applied_record_is_bounded(redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.store as store

    monkeypatch.setattr(store, "APPLIED_KEEP", 5)
    monkeypatch.setattr(store, "APPLIED_TTL_MS", 0)
    led = Ledger(redis, keys)
    for i in range(12):
        await led.apply(CONV, None, f"t{i}", [NoteOp()])
    ck = keys.conversation(CONV)
    assert await redis.zcard(ck.applied) == 5
    assert await redis.hlen(ck.results) == 5
    assert await led.was_applied(CONV, "t11") and not await led.was_applied(CONV, "t0")


async def test_applied_record_keeps_the_newest_of_turns_applied_in_one_millisecond(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turns applied back to back (one pipelined write: mostly within one millisecond) are trimmed
    oldest first, not by turn id ("t10" sorts before "t2")."""
    import ledger.store as store

    monkeypatch.setattr(store, "APPLIED_KEEP", 3)
    monkeypatch.setattr(store, "APPLIED_TTL_MS", 0)
    led = Ledger(redis, keys)
    results = await led.apply_many([ApplyCall(CONV, None, f"t{i}", [NoteOp()]) for i in range(2, 12)])
    assert [r.version for r in results if not isinstance(r, Exception)] == list(range(1, 11))
    kept = await redis.zrange(keys.conversation(CONV).applied, 0, -1)
    assert kept == [b"t9", b"t10", b"t11"]
    assert [await led.was_applied(CONV, f"t{i}") for i in (8, 9, 10, 11)] == [False, True, True, True]


async def test_applied_records_of_the_old_ms_score_age_by_their_time(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written before scores carried a sequence (score = plain ms) sort as the oldest, and
    are dropped only once they are past the ttl like any other."""
    import ledger.store as store

    monkeypatch.setattr(store, "APPLIED_KEEP", 2)
    monkeypatch.setattr(store, "APPLIED_TTL_MS", 3_600_000)
    led = Ledger(redis, keys)
    ck = keys.conversation(CONV)
    now_ms = int(time.time() * 1000)
    # an hour-and-a-bit old record and a minute-old one, both in the old format
    await redis.zadd(ck.applied, {"old-expired": now_ms - 3_700_000, "old-recent": now_ms - 60_000})
    await redis.hset(ck.results, mapping={"old-expired": "1||", "old-recent": "2||"})
    for i in range(3):
        await led.apply(CONV, None, f"t{i}", [NoteOp()])
    kept = await redis.zrange(ck.applied, 0, -1)
    assert kept == [b"old-recent", b"t0", b"t1", b"t2"]  # within the ttl: kept beyond the newest 2
    assert not await led.was_applied(CONV, "old-expired") and await led.was_applied(CONV, "old-recent")


async def test_keys_share_partition_hash_tag(keys: Keys) -> None:
    ck = keys.conversation("abc")
    pk = keys.partition(ck.partition)
    tag = f"{{{ck.partition}}}"
    for key in (
        ck.meta,
        ck.tasks,
        ck.audit,
        ck.transcript,
        ck.applied,
        ck.results,
        pk.turns,
        pk.outbox,
        pk.lease,
    ):
        assert key.startswith(f"{keys.prefix}:{tag}:")
    assert Keys(prefix="x", partitions=16).partition_of("abc") == Keys(prefix="y", partitions=16).partition_of("abc")


async def test_publish_many_single_and_batch_validate_and_keep_order(redis: Redis, keys: Keys) -> None:
    from ledger.turns import InvalidTurn, Publisher, decode_entry, make_turn

    held = redis.client()  # a lone turn is a plain XADD (no pipeline): it must work over a held connection
    try:
        publisher = Publisher(held, keys, max_content_bytes=8)
        [one] = await publisher.publish_many([make_turn("c1", "hi", turn_id="t1")])
        ids = await publisher.publish_many([make_turn("c1", "a", turn_id="t2"), make_turn("c1", "b", turn_id="t3")])
        too_big = make_turn("c1", "far too long", turn_id="t4")
        for batch in ([too_big], [make_turn("c1", "ok", turn_id="t5"), too_big]):
            with pytest.raises(InvalidTurn, match="limit is 8"):
                await publisher.publish_many(batch)
    finally:
        await held.aclose()
    entries = await redis.xrange(keys.partition(keys.partition_of("c1")).turns)
    assert [e[0].decode() for e in entries] == [one, *ids]  # nothing of a refused batch was written
    assert [decode_entry(f).turn_id for _, f in entries] == ["t1", "t2", "t3"]


def test_trim_bound_is_the_oldest_pending_entry_else_the_last_delivered() -> None:
    from ledger.streams import group_row, trim_bound

    rows = [
        {"name": b"other", "pending": 0, "last-delivered-id": b"9-0"},
        {"name": b"g", "pending": 2, "last-delivered-id": b"7-0"},
    ]
    group = group_row(rows, "g")
    assert group is rows[1] and group_row(rows, "missing") is None
    assert trim_bound(group, {"pending": 2, "min": b"3-0", "max": b"7-0"}) == b"3-0"
    # the summary disagrees with the row (taken a moment apart): no trim this time
    assert trim_bound(group, {"pending": 0, "min": None, "max": None}) is None
    assert trim_bound(group, None) is None
    assert trim_bound({"name": "g", "pending": 0, "last-delivered-id": "7-0"}, None) == "7-0"
    assert trim_bound({"name": "g", "pending": 0, "last-delivered-id": b"0-0"}, None) is None  # nothing delivered
    assert trim_bound(None, None) is None
