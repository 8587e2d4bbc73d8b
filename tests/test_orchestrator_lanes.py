"""Lanes and backpressure in the running loop, against real Redis: conversations run concurrently,
one conversation's turns one at a time, and the in-flight bound holds across partitions."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis.asyncio import Redis

from ledger import Keys
from ledger.turns import Publisher, make_turn
from orchestrator.lanes import Capacity
from orchestrator.partition import GROUP
from orchestrator.runtime import Orchestrator
from orchestrator.turn_processor import TurnRecord
from tests.orch_support import GateRouter, JitterRouter, applied_total, loop_settings, pending_total, wait_until

#: decisions are held at a gate for as long as a test needs: no timeout may end them meanwhile
HOLD_MS = 60_000


async def _settled() -> None:
    """Let the loop run on for a moment: anything it would still read or start, it has by then."""
    await asyncio.sleep(0.3)


async def test_conversations_run_concurrently_and_each_one_serially(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix, decision_timeout_ms=HOLD_MS)
    keys = settings.keys()
    router = GateRouter()
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, router, observer=records.append)
    publisher = Publisher(redis, keys)
    others = [f"par-{c}" for c in range(12)]
    await publisher.publish_many([make_turn(c, "hello", turn_id=f"{c}-1") for c in others])
    await publisher.publish_many([make_turn("serial", f"message {i}", turn_id=f"serial-{i}") for i in range(5)])
    await orch.start()
    try:

        async def all_held() -> bool:
            return router.waiting == 13

        # 13 decisions held at once: the 12 conversations and the first turn of "serial"
        await wait_until(all_held, 10, "13 decisions held at once")
        await wait_until(lambda: _pending_is(redis, keys, 17), 10, "all 17 turns read")
        await _settled()
        assert router.waiting == 13 and router.by_conversation["serial"] == 1
        router.gate.set()
        await wait_until(lambda: _applied_is(redis, keys, [*others, "serial"], 17), 10, "17 turns applied")
    finally:
        router.gate.set()
        await orch.stop()
    assert [r.turn_id for r in records if r.conversation_id == "serial"] == [f"serial-{i}" for i in range(5)]
    assert router.peak == 13


async def test_in_flight_bound_holds_across_partitions(redis_url: str, prefix: str, redis: Redis) -> None:
    """16 partitions, a bound of 10: 10 turns in flight and 10 entries read, not a read's worth per
    partition; the rest stays unread in the streams until there is room."""
    settings = loop_settings(redis_url, prefix, partitions=16, max_in_flight=10, decision_timeout_ms=HOLD_MS)
    keys = settings.keys()
    router = GateRouter()
    orch = Orchestrator(settings, router)
    convs = [f"bp-{c}" for c in range(80)]
    turns = [make_turn(c, f"turn {i}", turn_id=f"{c}-{i}") for i in range(2) for c in convs]
    await Publisher(redis, keys).publish_many(turns)
    assert len({keys.partition_of(c) for c in convs}) == 16
    await orch.start()
    try:

        async def full() -> bool:
            return orch.capacity.in_flight == 10

        # 10 turns in the lanes (decisions held, or queued behind their conversation's held one)
        await wait_until(full, 10, "10 turns in flight")
        await _settled()
        assert orch.capacity.in_flight == 10 and 1 <= router.waiting <= 10
        assert await pending_total(redis, keys) == 10  # delivered to us == in flight: reading stopped
        router.gate.set()
        await wait_until(lambda: _applied_is(redis, keys, convs, 160), 30, "160 turns applied")
    finally:
        router.gate.set()
        await orch.stop()
    assert router.peak <= 10 and orch.capacity.peak == 10
    assert await pending_total(redis, keys) == 0


async def test_recovery_claims_no_more_than_there_is_room_for(redis_url: str, prefix: str, redis: Redis) -> None:
    """A dead owner left 100 entries pending: the new owner claims them as room frees, not all at once."""
    settings = loop_settings(redis_url, prefix, partitions=1, max_in_flight=10, decision_timeout_ms=HOLD_MS)
    keys = settings.keys()
    stream = keys.partition(0).turns
    convs = [f"rc-{c}" for c in range(100)]
    await Publisher(redis, keys).publish_many([make_turn(c, "hello", turn_id=f"{c}-1") for c in convs])
    await redis.xgroup_create(stream, GROUP, id="0")
    assert len((await redis.xreadgroup(GROUP, "dead-owner", {stream: ">"}, count=1000))[0][1]) == 100
    router = GateRouter()
    orch = Orchestrator(settings, router)
    await orch.start()
    try:

        async def full() -> bool:
            return router.waiting == 10

        await wait_until(full, 10, "10 decisions held")
        await _settled()
        held = {c["name"]: int(c["pending"]) for c in (await redis.xpending(stream, GROUP))["consumers"]}
        assert held[b"dead-owner"] == 90 and sum(held.values()) == 100, held
        router.gate.set()
        await wait_until(lambda: _applied_is(redis, keys, convs, 100), 30, "100 turns applied")
    finally:
        router.gate.set()
        await orch.stop()
    assert router.peak == 10 and orch.capacity.peak == 10
    assert await pending_total(redis, keys) == 0


async def _pending_is(redis: Redis, keys: Keys, n: int) -> bool:
    return await pending_total(redis, keys) == n


async def _applied_is(redis: Redis, keys: Keys, convs: list[str], n: int) -> bool:
    return await applied_total(redis, keys, convs) == n


@pytest.mark.parametrize("trim", [True, False])
async def test_turn_streams_are_trimmed_behind_the_group_never_past_a_pending_entry(
    redis_url: str, prefix: str, redis: Redis, trim: bool
) -> None:
    """Processed turns are trimmed from the stream at the control ticks; while the first entries are
    still pending (decisions held), nothing is. With ``trim_turns`` off the stream keeps everything."""
    settings = loop_settings(
        redis_url, prefix, partitions=1, max_in_flight=150, decision_timeout_ms=HOLD_MS, lease_ms=600, trim_turns=trim
    )
    keys = settings.keys()
    stream = keys.partition(0).turns
    convs = [f"tr-{c}" for c in range(100)]
    turns = [make_turn(c, f"turn {i}", turn_id=f"{c}-{i}") for i in range(3) for c in convs]
    await Publisher(redis, keys).publish_many(turns)
    router = GateRouter()
    orch = Orchestrator(settings, router)
    await orch.start()
    try:

        async def full() -> bool:
            return orch.capacity.in_flight == 150

        # 150 entries delivered, none acknowledged: a bound past the oldest pending one (say the last
        # delivered) would drop the first stream node (100 entries)
        await wait_until(full, 10, "150 turns in flight")
        await asyncio.sleep(1.0)  # several control ticks (every 200 ms) with the first entries pending
        assert await redis.xlen(stream) == 300
        router.gate.set()
        await wait_until(lambda: _applied_is(redis, keys, convs, 300), 30, "300 turns applied")
        if trim:
            # approximate trimming drops whole stream nodes (100 entries): at most one node stays
            await wait_until(lambda: _shorter_than(redis, stream, 101), 10, "the processed turns trimmed")
            trimmed = orch.metrics.registry.get_sample_value("sraq_turns_trimmed_total")
            assert trimmed is not None and trimmed >= 200
        else:
            await asyncio.sleep(1.0)
            assert await redis.xlen(stream) == 300
    finally:
        router.gate.set()
        await orch.stop()
    assert await pending_total(redis, keys) == 0


async def _shorter_than(redis: Redis, stream: str, n: int) -> bool:
    return int(await redis.xlen(stream)) < n


async def test_a_trickle_of_turns_costs_one_read_each(redis_url: str, prefix: str, redis: Redis) -> None:
    """Turns arriving one at a time: each is read by the read sent behind the wait for it, with no
    second read to find the stream empty (one fenced read per entry, plus a few around the start)."""
    settings = loop_settings(redis_url, prefix, partitions=1)
    keys = settings.keys()
    orch = Orchestrator(settings, GateRouter())
    assert isinstance(orch.backend, GateRouter)
    orch.backend.gate.set()
    publisher = Publisher(redis, keys)
    await orch.start()
    try:
        await publisher.publish(make_turn("trickle", "hello", turn_id="t-warm"))
        await wait_until(lambda: _applied_is(redis, keys, ["trickle"], 1), 10, "the first turn")
        worker = orch.partitions[0]
        before = worker.stream.reads
        for i in range(20):
            await publisher.publish(make_turn("trickle", f"message {i}", turn_id=f"t-{i}"))
            await wait_until(lambda n=i + 2: _applied_is(redis, keys, ["trickle"], n), 10, f"turn {i}")
        reads = worker.stream.reads - before
    finally:
        await orch.stop()
    assert 20 <= reads <= 22, reads


async def test_a_slot_given_back_wakes_one_waiting_reader_first_come_first_served() -> None:
    capacity = Capacity(2)
    capacity.take(2)
    waiters = [capacity.room() for _ in range(16)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    capacity.give(1)
    assert [w.done() for w in waiters] == [True] + [False] * 15  # not all 16 woken to find one slot
    waiters[1].cancel()  # a reader that stopped waiting is skipped
    capacity.take(1)
    capacity.give(2)
    assert [w.done() and not w.cancelled() for w in waiters[:4]] == [True, False, True, True]
    assert not any(w.done() for w in waiters[4:])
    # woken but not reading after all (stopping): the slot goes to the next waiter
    capacity.take(2)
    capacity.give(1)
    assert waiters[4].done() and not waiters[5].done()
    capacity.pass_on()  # (the slot is still free: nobody took it)
    assert waiters[5].done() and not waiters[6].done()


async def test_a_bound_of_one_processes_every_turn_one_at_a_time(redis_url: str, prefix: str, redis: Redis) -> None:
    """The smallest bound: no read may hold a slot while waiting (a wait budget of 0), readers of
    idle partitions wait holding nothing, and every turn still goes through, one at a time."""
    settings = loop_settings(redis_url, prefix, partitions=4, max_in_flight=1)
    keys = settings.keys()
    records: list[TurnRecord] = []
    orch = Orchestrator(settings, JitterRouter(max_ms=2), observer=records.append)
    convs = [f"one-{c}" for c in range(12)]
    publisher = Publisher(redis, keys)
    await publisher.publish_many([make_turn(c, "first", turn_id=f"{c}-0") for c in convs])
    await orch.start()
    try:
        # and more while it runs: idle readers must notice new entries without holding the one slot
        await asyncio.sleep(0.2)
        await publisher.publish_many([make_turn(c, "second", turn_id=f"{c}-1") for c in convs])
        await wait_until(lambda: _applied_is(redis, keys, convs, 24), 30, "24 turns applied")
    finally:
        await orch.stop()
    assert orch.capacity.peak == 1
    assert len(records) == 24 and await pending_total(redis, keys) == 0


async def test_no_free_slot_is_left_unused_while_readers_wait(redis_url: str, prefix: str, redis: Redis) -> None:
    """16 partitions under a bound of 4, three busy conversations: a reader woken for a slot that
    ends up waiting for entries holding nothing must hand the slot on. (It did not, and the slot sat
    free while busy partitions' readers slept, up to a whole block time, ~50 times in 12 s.)"""
    settings = loop_settings(redis_url, prefix, partitions=16, max_in_flight=4, read_block_ms=1000)
    keys = settings.keys()
    orch = Orchestrator(settings, JitterRouter(max_ms=30))
    publisher = Publisher(redis, keys)
    capacity = orch.capacity
    stalls: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:
        since: float | None = None
        while not done.is_set():
            now = time.monotonic()
            if capacity.free > 0 and capacity.sleeping:
                since = since or now
            elif since is not None:
                if now - since > 0.15:
                    stalls.append(now - since)
                since = None
            await asyncio.sleep(0.005)

    rng = random.Random(3)
    await orch.start()
    watcher = asyncio.create_task(watch(), name="test:watch-capacity")
    published = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3:
            batch = [make_turn(f"busy-{rng.randrange(3)}", "hi", turn_id=f"t{published + i}") for i in range(3)]
            await publisher.publish_many(batch)
            published += len(batch)
            await asyncio.sleep(rng.random() * 0.02)
        await wait_until(lambda: _applied_is(redis, keys, [f"busy-{c}" for c in range(3)], published), 60, "all")
    finally:
        done.set()
        await watcher
        await orch.stop()
    assert stalls == []
