"""The paced client of ``sraq bench loop`` writes what ``Publisher`` would, stamped when written."""

from __future__ import annotations

import random
import time

import msgspec
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from ledger import Keys
from ledger.turns import decode_entry, encode_turn, make_turn
from orchestrator.bench_publisher import StampedXadd, publish_paced
from orchestrator.bench_turns import utterance


def test_a_stamped_command_is_the_publishers_xadd_with_the_new_ts(redis_url: str, keys: Keys) -> None:
    client = sync_redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        conn = client.connection
        assert conn is not None
        turn = make_turn("conv-1", "book a table for two", turn_id="t-1")
        stream = keys.partition(keys.partition_of("conv-1")).turns
        command = StampedXadd(conn, stream, turn)
        for ts in (1_800_000_000.25, 1_800_000_001.5):  # stamping twice: the second ts wins, nothing else moves
            packed = command.stamped(ts)
            payload = encode_turn(msgspec.structs.replace(turn, ts=ts))["turn"]
            assert packed == b"".join(conn.pack_command("XADD", stream, "*", "turn", payload))
    finally:
        client.close()


async def test_the_client_publishes_every_turn_in_order_stamped_on_schedule(
    redis_url: str, keys: Keys, redis: Redis
) -> None:
    before = time.time()
    report = publish_paced(redis_url, keys, rate=200.0, seconds=0.5, conversations=7)
    after = time.time()
    assert report["published"] == 100 and report["late_turns"] >= 0 and report["largest_write"] >= 1
    assert 0.4 < report["seconds"] < 5 and report["cpu_s"] >= 0

    rng = random.Random(17)  # the client's seed: the same texts in the same order
    expected = {f"r-{i}": (f"bench-{i % 7}", utterance(rng)) for i in range(100)}
    seen: dict[str, float] = {}
    for pk in keys.all_partitions():
        for _entry_id, fields in await redis.xrange(pk.turns):
            turn = decode_entry(fields)
            assert (turn.conversation_id, turn.content) == expected[turn.turn_id]
            assert keys.partition(keys.partition_of(turn.conversation_id)).turns == pk.turns
            assert turn.turn_id not in seen
            seen[turn.turn_id] = turn.ts
    assert set(seen) == set(expected)
    stamps = [seen[f"r-{i}"] for i in range(100)]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps)  # stamped when written, in schedule order
    # spread over the run, not written at once: the last turn went out ~0.5 s after the first
    assert stamps[-1] - stamps[0] > 0.3


async def test_warm_up_turns_go_first_on_the_same_schedule(redis_url: str, keys: Keys, redis: Redis) -> None:
    report = publish_paced(redis_url, keys, rate=200.0, seconds=0.2, conversations=5, warmup=20)
    assert report["published"] == 60 and report["warmup"] == 20
    stamps: dict[str, float] = {}
    for pk in keys.all_partitions():
        for _entry_id, fields in await redis.xrange(pk.turns):
            turn = decode_entry(fields)
            stamps[turn.turn_id] = turn.ts
    order = [f"w-{i}" for i in range(20)] + [f"r-{i}" for i in range(40)]
    assert sorted(stamps) == sorted(order)
    assert [stamps[t] for t in order] == sorted(stamps.values())  # warm-up first, then the measured turns
    gap = stamps["r-0"] - stamps["w-19"]
    assert gap < 0.1  # no pause between them: the measured turns continue the schedule


async def test_a_refused_write_fails_the_run(redis_url: str, keys: Keys, redis: Redis) -> None:
    # every conversation's stream key holds a string: each XADD is refused with WRONGTYPE
    for pk in keys.all_partitions():
        await redis.set(pk.turns, "not a stream")
    with pytest.raises(sync_redis.ResponseError, match="WRONGTYPE"):
        publish_paced(redis_url, keys, rate=100.0, seconds=0.1, conversations=3)
