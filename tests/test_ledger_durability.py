"""Ledger under concurrency and across a Redis crash (real redis-server processes)."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ledger import ApplyCall, ApplyResult, Keys, Ledger, NoteOp, StartOp, UpdateOp, VersionConflict
from orchestrator.local_redis import LocalRedis

CONV = "race"


async def test_fifty_concurrent_writers_cas_retry(redis_url: str, keys: Keys) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(10)]
    ledgers = [Ledger(c, keys) for c in clients]
    await ledgers[0].apply(CONV, 0, "seed", [StartOp("shared task")])
    conflicts: list[int] = []
    commits: list[int] = []

    async def writer(i: int) -> None:
        led = ledgers[i % len(ledgers)]
        for _attempt in range(200):
            snap = await led.snapshot(CONV)
            await asyncio.sleep(random.random() / 1000)
            op = UpdateOp("task-1", f"writer {i}") if i % 2 else NoteOp(f"writer {i}")
            try:
                res = await led.apply(CONV, snap.version, f"w{i}", [op])
            except VersionConflict as exc:
                assert exc.current > snap.version
                conflicts.append(i)
                continue
            commits.append(res.version)
            return
        raise AssertionError(f"writer {i} never committed")

    try:
        await asyncio.gather(*(writer(i) for i in range(50)))
        snap = await ledgers[0].snapshot(CONV)
        assert len(commits) == 50
        assert sorted(commits) == list(range(2, 52)), "each commit got a distinct version"
        assert snap.version == 51 == 1 + len(commits)
        trail = await ledgers[0].audit(CONV)
        assert len(trail) == 51
        assert sorted(e.turn_id for e in trail) == sorted(["seed"] + [f"w{i}" for i in range(50)])
        assert [e.ledger_version for e in trail] == list(range(1, 52))
        task = snap.task("task-1")
        assert task is not None and task.version == 1 + 25  # 25 odd writers updated it
        assert len(conflicts) > 0, "the race never produced a conflict; the test did not test anything"
    finally:
        for c in clients:
            await c.aclose()


async def test_state_survives_sigkill_with_aof(keys: Keys) -> None:
    server = LocalRedis().start()
    try:
        client = Redis.from_url(server.url)
        led = Ledger(client, keys)
        await led.apply(CONV, 0, "t1", [StartOp("durable task")])
        await led.apply(CONV, 1, "t2", [UpdateOp("task-1", "still here")])
        await client.config_set("appendfsync", "always")  # make the kill deterministic for the test
        await led.apply(CONV, 2, "t3", [NoteOp("last")])
        before = await led.snapshot(CONV)
        audit_before = await led.audit(CONV)
        outbox = keys.partition(keys.partition_of(CONV)).outbox
        outbox_before = await client.xrange(outbox)
        await client.aclose()

        server.kill()
        server.start()

        client = Redis.from_url(server.url)
        led = Ledger(client, keys)  # a fresh process would start with an empty script cache, like this
        assert await client.script_exists(led._apply_script.sha) == [False]
        assert await led.snapshot(CONV) == before
        assert await led.audit(CONV) == audit_before
        assert await client.xrange(outbox) == outbox_before
        res = await led.apply(CONV, before.version, "t4", [StartOp("after restart")])
        assert res.created == ["task-2"] and res.version == before.version + 1
        dup = await led.apply(CONV, 0, "t2", [UpdateOp("task-1", "replayed")])
        assert dup.duplicate
        await client.aclose()
    finally:
        server.cleanup()


async def test_a_connection_the_server_closed_costs_one_round_trip_at_most(redis_url: str, keys: Keys) -> None:
    """Pipelined applies take a pooled connection without redis-py's per-checkout probe; one that the
    server closed meanwhile fails one round trip (nothing applied), is dropped, and the next works."""
    client, admin = Redis.from_url(redis_url), Redis.from_url(redis_url)
    ledger = Ledger(client, keys)
    try:
        [first] = await ledger.apply_many([ApplyCall("c1", 0, "t1", [NoteOp("a")])])
        assert isinstance(first, ApplyResult) and first.version == 1
        victim = await client.client_id()  # the pool's one connection, idle again after the apply
        assert await admin.client_kill_filter(_id=victim) == 1
        failures = 0
        for _attempt in range(2):
            try:
                [second] = await ledger.apply_many([ApplyCall("c1", 1, "t2", [NoteOp("b")])])
                break
            except RedisConnectionError:
                failures += 1
                assert (await ledger.snapshot("c1")).version == 1  # nothing half-applied
        assert failures <= 1 and isinstance(second, ApplyResult) and second.version == 2
        assert await client.client_id() != victim  # the closed connection left the pool
    finally:
        await client.aclose()
        await admin.aclose()
