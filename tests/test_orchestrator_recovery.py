"""Poison entries, pending recovery, trimmed entries, fencing of a stale owner, Redis restarts."""

from __future__ import annotations

import asyncio
import signal
import time

from redis.asyncio import Redis

from intent.backend import Decision, DecisionRequest
from intent.contract import Reply
from ledger import Keys, Ledger
from ledger.turns import Publisher, decode_entry, encode_turn, make_turn
from orchestrator.local_redis import LocalRedis
from orchestrator.membership import Membership
from orchestrator.partition import GROUP
from orchestrator.partition_stream import DEAD_LETTER_LUA
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from tests.orch_support import assert_exactly_once, dead_letters, loop_settings, pending_total, wait_until


async def _applied(ledger: Ledger, conv: str, n: int) -> bool:
    return (await ledger.snapshot(conv)).applied_turns >= n


async def test_poison_entries_go_to_dead_letters_and_loop_continues(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    stream = keys.partition(keys.partition_of("poison-ok")).turns
    garbage: list[dict[str | bytes, str | bytes]] = [
        {"turn": b"\xff\x00not msgpack"},
        {"foo": "bar"},
        {"conversation_id": "c", "role": "robot", "content": "x"},
        {"conversation_id": "c", "content": b"\xff\xfe"},
        {"conversation_id": "bad id!", "content": "x"},
        {"conversation_id": "c", "content": "x" * 20_000},
    ]
    try:
        ids = [(await redis.xadd(stream, fields)).decode() for fields in garbage]  # type: ignore[arg-type]
        await redis.xadd(stream, {"conversation_id": "poison-ok", "content": "hello", "turn_id": "ok1"})
        await wait_until(lambda: _applied(ledger, "poison-ok", 1), 20, "the valid turn after the garbage")
        await wait_until(lambda: _count_dead(redis, keys, len(garbage)), 10, "dead letters")
    finally:
        await orch.stop()
    dead = await dead_letters(redis, keys)
    assert sorted(d[b"entry_id"].decode() for d in dead) == sorted(ids)
    reasons = {d[b"entry_id"].decode(): d[b"reason"].decode() for d in dead}
    assert "undecodable" in reasons[ids[0]] and "unknown fields" in reasons[ids[1]]
    assert "unknown role" in reasons[ids[2]] and "UTF-8" in reasons[ids[3]]
    assert "conversation id" in reasons[ids[4]] and "limit" in reasons[ids[5]]
    assert all(d[b"reason_kind"] == b"invalid" for d in dead)
    assert dead[0][b"field:turn"] == b"\xff\x00not msgpack"  # the original payload is kept, byte for byte
    assert await pending_total(redis, keys) == 0
    assert orch.metrics.registry.get_sample_value("sraq_dead_letters_total", {"reason": "invalid"}) == len(garbage)


async def _count_dead(redis: Redis, keys: Keys, n: int) -> bool:
    return len(await dead_letters(redis, keys)) >= n


async def test_new_owner_recovers_pending_trimmed_and_overdelivered(redis_url: str, prefix: str, redis: Redis) -> None:
    settings = loop_settings(redis_url, prefix, max_deliveries=5)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    stream = keys.partition(keys.partition_of("rec")).turns
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = []
    for i in range(1, 5):
        ids.append((await redis.xadd(stream, encode_turn(make_turn("rec", f"m{i}", turn_id=f"t{i}")))).decode())  # type: ignore[arg-type]
    # a consumer that died holding all four
    await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=10)
    await redis.xdel(stream, ids[1])  # t2 trimmed away while pending
    await redis.execute_command("XCLAIM", stream, GROUP, "ghost", 0, ids[3], "RETRYCOUNT", 9)  # t4: 9 deliveries
    errors = keys.partition(keys.partition_of("rec")).errors
    await redis.hset(errors, ids[3], "RuntimeError('the model process died')")  # what an earlier attempt recorded
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    try:
        await wait_until(lambda: _applied(ledger, "rec", 2), 20, "t1 and t3")
        await Publisher(redis, keys).publish(make_turn("rec", "m5", turn_id="t5"))
        await wait_until(lambda: _applied(ledger, "rec", 3), 20, "t5")
    finally:
        await orch.stop()
    await assert_exactly_once(ledger, {"rec": ["t1", "t3", "t5"]})
    dead = {d[b"entry_id"].decode(): d for d in await dead_letters(redis, keys)}
    assert set(dead) == {ids[1], ids[3]}
    assert dead[ids[1]][b"reason_kind"] == b"trimmed"
    assert dead[ids[3]][b"reason_kind"] == b"deliveries" and int(dead[ids[3]][b"deliveries"]) > 5
    assert dead[ids[3]][b"reason"].endswith(b"; last error: RuntimeError('the model process died')")
    assert await redis.hlen(errors) == 0  # done with: the record went with the dead letter
    assert await pending_total(redis, keys) == 0


async def test_a_turn_that_keeps_failing_is_dead_lettered_with_its_last_error(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    """A conversation whose ledger is corrupt (its meta key holds a string: every read and commit
    fails with WRONGTYPE): its turn is retried, then dead-lettered with the error once its deliveries
    run out; the error recorded meanwhile is dropped with it; other conversations carry on."""
    settings = loop_settings(redis_url, prefix, max_deliveries=2)
    keys = settings.keys()
    ledger = Ledger(redis, keys)
    await redis.set(keys.conversation("broken").meta, "not a hash")
    publisher = Publisher(redis, keys)
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    try:
        await publisher.publish(make_turn("broken", "hello", turn_id="b1"))
        await publisher.publish(make_turn("fine", "hello", turn_id="f1"))
        await wait_until(lambda: _applied(ledger, "fine", 1), 20, "the other conversation's turn")
        await wait_until(lambda: _count_dead(redis, keys, 1), 20, "the failing turn's dead letter")
    finally:
        await orch.stop()
    (dead,) = await dead_letters(redis, keys)
    assert dead[b"reason_kind"] == b"failed" and b"WRONGTYPE" in dead[b"reason"], dead
    assert dead[b"reason"].startswith(b"failed 2 times; last error: ")
    # the turn itself is kept, as it was in the stream, for a replay
    kept = {k.removeprefix(b"field:"): v for k, v in dead.items() if k.startswith(b"field:")}
    assert decode_entry(kept).turn_id == "b1"
    errors = keys.partition(keys.partition_of("broken")).errors
    assert await redis.hlen(errors) == 0
    assert await pending_total(redis, keys) == 0


class _Gate:
    """Replies at once, except to ``block``: that decision waits until the test opens the gate."""

    name = "gate"

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.blocked = asyncio.Event()

    async def decide(self, request: DecisionRequest) -> Decision:
        if request.transcript[-1].content == "block":
            self.blocked.set()
            await self.open.wait()
        return Decision(intent=Reply("ok"), confidence=1.0, tier="gate", latency_ms=0.0)

    async def aclose(self) -> None:
        return None


async def test_paused_stale_owner_commit_is_refused(redis_url: str, prefix: str, redis: Redis) -> None:
    # one partition; a long lease so the stale owner does not notice through its renewals
    old_settings = loop_settings(redis_url, prefix, partitions=1, lease_ms=60_000, instance_id="z-old")
    keys = old_settings.keys()
    ledger = Ledger(redis, keys)
    gate = _Gate()
    old = Orchestrator(old_settings, gate)
    await old.start()
    new: Orchestrator | None = None
    try:
        await Publisher(redis, keys).publish(make_turn("fence", "block", turn_id="f1"))
        await asyncio.wait_for(gate.blocked.wait(), 10)
        # meanwhile the lease moves on (expired and taken by someone else: a higher fencing token)
        pk = keys.partition(0)
        await redis.delete(pk.lease)
        thief = await Membership(redis, keys, "thief", 60_000).acquire(0)
        assert thief is not None and int(thief.token) > int(old.partitions[0].lease.token)
        gate.open.set()  # the paused owner wakes up and tries to commit
        await wait_until(_async(lambda: 0 not in old.partitions), 10, "the stale owner to drop the partition")
        assert not await ledger.was_applied("fence", "f1")  # refused: nothing written
        assert await pending_total(redis, keys) == 1  # still pending, for the legitimate owner
        assert old.metrics.registry.get_sample_value("sraq_lease_losses_total") == 1.0
        # the legitimate owner takes over and applies it exactly once
        await redis.delete(pk.lease)
        new = Orchestrator(loop_settings(redis_url, prefix, partitions=1, instance_id="a-new"), ScriptedBackend())
        await new.start()
        await wait_until(lambda: _applied(ledger, "fence", 1), 10, "f1 by the new owner")
    finally:
        await old.stop()
        if new is not None:
            await new.stop()
    await assert_exactly_once(ledger, {"fence": ["f1"]})
    assert await pending_total(redis, keys) == 0


def _async(pred):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(pred())

    return check


async def test_redis_restart_loses_no_turn(tmp_path, prefix: str) -> None:  # type: ignore[no-untyped-def]
    server = LocalRedis(data_dir=tmp_path).start()
    client = Redis.from_url(server.url)
    settings = loop_settings(server.url, prefix, lease_ms=3000)
    keys = settings.keys()
    ledger = Ledger(client, keys)
    publisher = Publisher(client, keys)
    orch = Orchestrator(settings, ScriptedBackend(latency_ms=1))
    convs = [f"rs-{c}" for c in range(20)]
    expected = {c: [f"{c}-{i}" for i in range(30)] for c in convs}
    try:
        await orch.start()
        await publisher.publish_many([make_turn(c, "x", turn_id=t) for c in convs for t in expected[c][:15]])
        await asyncio.sleep(0.1)
        server.stop()  # SIGTERM: Redis flushes its AOF; every client connection drops
        await asyncio.sleep(0.5)
        server.start()
        deadline = time.monotonic() + 20
        while True:  # the publisher also sees the outage; retry until Redis is back
            try:
                await publisher.publish_many([make_turn(c, "y", turn_id=t) for c in convs for t in expected[c][15:]])
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

        async def all_applied() -> bool:
            return all([(await ledger.snapshot(c)).applied_turns == 30 for c in convs])

        await wait_until(all_applied, 40, "every turn after the restart", every=0.1)
        await assert_exactly_once(ledger, expected)
        assert await pending_total(client, keys) == 0
        assert orch.state.value == "running"
        errors = orch.metrics.registry.get_sample_value("sraq_redis_errors_total")
        assert errors is not None and errors > 0  # the outage was seen, and survived
    finally:
        await orch.stop()
        await client.aclose()
        server.cleanup()


async def test_stop_is_bounded_when_redis_hangs(tmp_path, prefix: str) -> None:  # type: ignore[no-untyped-def]
    server = LocalRedis(data_dir=tmp_path, appendonly=False).start()
    orch = Orchestrator(loop_settings(server.url, prefix, grace_s=0.5), ScriptedBackend())
    try:
        await orch.start()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)  # Redis hangs: connections stay open, nothing answers
        await asyncio.sleep(0.3)
        started = time.monotonic()
        async with asyncio.timeout(30):
            await orch.stop()
        assert time.monotonic() - started < 20
        assert orch.state.value == "stopped"
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.cleanup()


async def test_a_retried_dead_letter_of_a_trimmed_entry_is_written_once(redis: Redis, keys: Keys) -> None:
    """A trimmed entry is no longer in the PEL, so XACK cannot tell a retry (its first attempt's reply
    lost) from a first attempt: the dead-letter step checks the newest dead letter instead."""
    pk = keys.partition(0)

    def args(entry_id: str) -> list[str | int]:
        return ["", GROUP, entry_id, "trimmed", "entry_id", entry_id, "reason", "trimmed", "deliveries", 0, "at", 1]

    for entry_id in ("5-0", "5-0", "6-0", "6-0"):  # each one a first attempt and its retry
        await redis.eval(DEAD_LETTER_LUA, 4, pk.lease, pk.turns, pk.dead, pk.errors, *args(entry_id))
    assert [f[b"entry_id"] for _id, f in await redis.xrange(pk.dead)] == [b"5-0", b"6-0"]


async def test_a_lease_key_without_ttl_does_not_make_the_control_loop_spin(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    """A partition's lease key written by hand without an expiry never runs out: the instance that
    wants the partition must not wake early for it over and over (it ticked every 5 ms)."""
    settings = loop_settings(redis_url, prefix, partitions=2, lease_ms=1500)
    keys = settings.keys()
    await redis.set(keys.partition(0).lease, "someone")
    orch = Orchestrator(settings, ScriptedBackend())
    await orch.start()
    try:
        before = orch.ticks
        await asyncio.sleep(1.0)
        ticks = orch.ticks - before
        owned = sorted(orch.partitions)
    finally:
        await orch.stop()
    assert owned == [1]  # partition 0 stays with the key's "owner"
    assert ticks <= 4, ticks  # one every lease / 3 = 0.5 s
