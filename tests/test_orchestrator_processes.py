"""Real orchestrator processes: SIGKILL under load, two instances (rebalance, pause, kill), SIGTERM."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from ledger import DecisionEvent, Keys, Ledger
from ledger.turns import Publisher, make_turn
from tests.orch_support import Instance, applied_total, assert_exactly_once, pending_total, wait_until

LEASE_S = 1.5
#: The survivor owns a silent peer's partitions once their leases ran out: within the lease time of
#: the peer's last renewal, measured here from the signal (the renewal came before it), plus slack
#: for the health polling (every 0.1 s) and a busy machine. Ticks at lease/3 alone took up to ~2 s.
TAKEOVER_S = LEASE_S + 0.4
#: Bound on a new instance's start-up (imports, registration, leases): generous, it only bounds a
#: failure; seen above 15 s while other test suites and profilers loaded this 2-vCPU machine.
START_S = 30


def _keys(prefix: str) -> Keys:
    return Keys(prefix=prefix, partitions=16)


async def _publish_paced(publisher: Publisher, expected: dict[str, list[str]], batches: int, pause: float) -> None:
    """Publish every conversation's turns in order, spread over ``batches`` pipelined rounds."""
    per = len(next(iter(expected.values()))) // batches
    for b in range(batches):
        rows = [(c, t) for c, ids in expected.items() for t in ids[b * per : (b + 1) * per]]
        turns = [make_turn(c, f"say {t}", turn_id=t) for c, t in rows]
        await publisher.publish_many(turns)
        await asyncio.sleep(pause)


async def _wait_partitions(inst: Instance, n: int, within: float) -> float:
    started = time.monotonic()

    async def owns() -> bool:
        return len(await asyncio.to_thread(inst.partitions)) == n

    await wait_until(owns, within, f"{inst.name} to own {n} partitions", every=0.1)
    return time.monotonic() - started


async def test_sigkill_under_load_then_restart_is_exactly_once(redis_url: str, prefix: str, redis: Redis,
                                                               tmp_path: Path) -> None:  # fmt: skip
    keys = _keys(prefix)
    rng = random.Random(7)
    convs = [f"crash-{c}" for c in range(100)]
    expected = {c: [f"{c}-{i}" for i in range(20)] for c in convs}
    publishing = asyncio.create_task(_publish_paced(Publisher(redis, keys), expected, 10, 0.25))
    # decisions slow enough that turns are always in flight when an instance is killed, so the
    # recovery path is exercised whatever the machine's speed (3 ms left nothing pending when quiet)
    env = {"SRAQ_SCRIPTED_LATENCY_MS": "40"}
    instances = []
    try:
        for k in range(3):  # three crashes at random points of the load
            inst = Instance(redis_url, prefix, tmp_path, f"crash{k}", **env).start()
            instances.append(inst)
            await _wait_partitions(inst, 16, START_S)
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            inst.signal(signal.SIGKILL)
            inst.wait()
        await publishing
        final = Instance(redis_url, prefix, tmp_path, "final", **env).start()
        instances.append(final)
        await _wait_partitions(final, 16, START_S)  # (the last crashed instance may have finished the work)
        await wait_until(lambda: _all(redis, keys, convs, 20), 60, "all turns after the crashes", every=0.2)
        final.signal(signal.SIGTERM)
        assert final.wait() == 0
    finally:
        publishing.cancel()
        for inst in instances:
            inst.kill()
    await assert_exactly_once(Ledger(redis, keys), expected)
    assert await pending_total(redis, keys) == 0
    # one decision event per turn: it is written inside the commit, so a kill cannot leave a turn
    # committed without its event, nor a replayed turn with a second one
    published = Counter[str]()
    for pk in keys.all_partitions():
        for _id, fields in await redis.xrange(pk.decisions):
            published[msgspec.json.decode(fields[b"data"], type=DecisionEvent).turn_id] += 1
    assert published == Counter(t for turns in expected.values() for t in turns)
    # the crashes really left work behind: some later instance claimed a dead one's pending entries
    logs = "".join(i.log_text() for i in instances[1:])
    assert "recovered_pending" in logs


async def _all(redis: Redis, keys: Keys, convs: list[str], n: int) -> bool:
    return await applied_total(redis, keys, convs) == n * len(convs)


async def test_two_instances_rebalance_pause_and_kill(redis_url: str, prefix: str, redis: Redis,
                                                      tmp_path: Path) -> None:  # fmt: skip
    keys = _keys(prefix)
    env = {"SRAQ_SCRIPTED_LATENCY_MS": "2"}
    a = Instance(redis_url, prefix, tmp_path, "inst-a", **env).start()
    b = Instance(redis_url, prefix, tmp_path, "inst-b", **env).start()
    convs = [f"two-{c}" for c in range(60)]
    expected = {c: [f"{c}-{i}" for i in range(30)] for c in convs}
    publishing: asyncio.Task[None] | None = None
    try:
        await _wait_partitions(a, 8, START_S)
        await _wait_partitions(b, 8, START_S)
        assert sorted(a.partitions() + b.partitions()) == list(range(16))
        publishing = asyncio.create_task(_publish_paced(Publisher(redis, keys), expected, 15, 0.3))
        await asyncio.sleep(0.5)
        # a paused owner (GC pause, VM freeze): the survivor takes everything within the lease time (it
        # wakes when the peer's heartbeat and the leases run out, not at its next regular tick)
        b.signal(signal.SIGSTOP)
        took = await _wait_partitions(a, 16, 10)
        assert took < TAKEOVER_S, took
        b.signal(signal.SIGCONT)  # it wakes up holding stale tokens: its renewals/commits are refused
        await wait_until(_log_has(b, "partition_aborted"), 10, "the stale owner to notice")
        await _wait_partitions(b, 8, START_S)  # then it rejoins and gets its share back
        await _wait_partitions(a, 8, START_S)
        b.signal(signal.SIGKILL)
        b.wait()
        took = await _wait_partitions(a, 16, 10)
        assert took < TAKEOVER_S, took
        await publishing
        await wait_until(lambda: _all(redis, keys, convs, 30), 60, "every turn", every=0.2)
        a.signal(signal.SIGTERM)
        assert a.wait() == 0
    finally:
        if publishing is not None:
            publishing.cancel()
        a.kill()
        b.kill()
    await assert_exactly_once(Ledger(redis, keys), expected)
    assert await pending_total(redis, keys) == 0


def _log_has(inst: Instance, text: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return text in inst.log_text()

    return check


async def test_sigterm_drains_and_leaves_nothing_pending(redis_url: str, prefix: str, redis: Redis,
                                                         tmp_path: Path) -> None:  # fmt: skip
    keys = _keys(prefix)
    convs = [f"term-{c}" for c in range(50)]
    expected = {c: [f"{c}-{i}" for i in range(40)] for c in convs}
    await Publisher(redis, keys).publish_many(
        [make_turn(c, "hi", turn_id=t) for c, ids in expected.items() for t in ids]
    )
    first = Instance(redis_url, prefix, tmp_path, "term1", SRAQ_SCRIPTED_LATENCY_MS="5").start()
    second: Instance | None = None
    try:
        await wait_until(lambda: _some(redis, keys, convs, 100), 30, "some progress", every=0.05)
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        done = await applied_total(redis, keys, convs)
        assert 100 <= done < 2000, done  # stopped mid-way ...
        assert await pending_total(redis, keys) == 0  # ... with nothing read and left unacknowledged
        assert await redis.zcard(keys.instances) == 0  # left the live set
        assert all([not await redis.exists(pk.lease) for pk in keys.all_partitions()])  # leases released
        second = Instance(redis_url, prefix, tmp_path, "term2").start()
        await _wait_partitions(second, 16, START_S)
        await wait_until(lambda: _all(redis, keys, convs, 40), 60, "the rest", every=0.2)
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    await assert_exactly_once(Ledger(redis, keys), expected)
    assert "orchestrator_stopped" in first.log_text()


async def _some(redis: Redis, keys: Keys, convs: list[str], n: int) -> bool:
    return await applied_total(redis, keys, convs) >= n


async def test_json_logs_carry_the_turn_fields_and_the_event_loop(redis_url: str, prefix: str, redis: Redis,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    keys = _keys(prefix)
    inst = Instance(redis_url, prefix, tmp_path, "logs", SRAQ_LOG_FORMAT="json", SRAQ_LOG_LEVEL="debug").start()
    ledger = Ledger(redis, keys)
    try:
        await Publisher(redis, keys).publish(make_turn("log-conv", "start: book a table", turn_id="log-turn-1"))

        async def applied() -> bool:
            return await ledger.was_applied("log-conv", "log-turn-1")

        await wait_until(applied, START_S, "the turn to be committed", every=0.05)
        inst.signal(signal.SIGTERM)
        assert inst.wait(30) == 0
    finally:
        inst.kill()
    lines = [json.loads(line) for line in inst.log_text().splitlines() if line.strip()]  # every line is JSON
    [started] = [x for x in lines if x["event"] == "orchestrator_started"]
    assert started["loop"] == "uvloop" and started["level"] == "info"
    [committed] = [x for x in lines if x["event"] == "turn_committed"]
    assert committed["level"] == "debug"  # per turn: debug only
    assert committed["conversation_id"] == "log-conv" and committed["turn_id"] == "log-turn-1"
    assert committed["partition"] == keys.partition_of("log-conv")
    assert committed["tier"] == "scripted" and committed["action"] == "start_task"
    latency, processing = committed["decision_latency_ms"], committed["processing_ms"]
    assert isinstance(latency, float) and isinstance(processing, float)
    assert 0 <= latency <= processing < 30_000
