"""The lean script calls (ledger/resp.py) against real Redis: same bytes as redis-py, same replies."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from ledger.resp import evalsha, exchange, pack_bulk, pack_command_head, pack_evalsha, reloading

ECHO = "return {KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]) + 1}"
ECHO_SHA = hashlib.sha1(ECHO.encode()).hexdigest()


@pytest.fixture
async def held(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, single_connection_client=True)
    try:
        yield client
    finally:
        await client.aclose()


def test_packed_like_redis_py() -> None:
    """Both ways of packing give exactly the bytes redis-py's own packer gives."""
    keys, args = ["k:é", "k2"], [b"\x00bin", "text", 42]
    want = b"".join(Connection().pack_command("EVALSHA", ECHO_SHA, 2, *keys, *args))
    assert pack_evalsha(ECHO_SHA, keys, args) == want
    assert pack_evalsha(ECHO_SHA, keys, args, cache_keys=False) == want


def test_command_head_and_bulk_pack_like_redis_py() -> None:
    """A head packed once plus its last argument packed per call: redis-py's bytes for the command."""
    parts = ["XREAD", "COUNT", 1, "BLOCK", 500, "STREAMS", "p:{3}:turns"]
    want = b"".join(Connection().pack_command(*parts, "1700000000000-12"))
    assert pack_command_head(parts, nargs=1) + pack_bulk("1700000000000-12") == want


async def test_evalsha_loads_the_script_once_and_returns_the_reply(held: Redis, prefix: str) -> None:
    await held.script_flush()
    assert await evalsha(held, ECHO_SHA, ECHO, [f"{prefix}:k"], [b"a", "b", 41]) == [
        f"{prefix}:k".encode(),
        b"a",
        b"b",
        42,
    ]
    assert await held.script_exists(ECHO_SHA) == [True]
    # again on the same held connection, now without the load
    assert await evalsha(held, ECHO_SHA, ECHO, [f"{prefix}:k"], [b"x", "y", 0]) == [
        f"{prefix}:k".encode(),
        b"x",
        b"y",
        1,
    ]


async def test_evalsha_raises_the_scripts_error_and_the_connection_stays_usable(held: Redis) -> None:
    body = "return redis.error_reply('no way')"
    with pytest.raises(ResponseError, match="no way"):
        await evalsha(held, hashlib.sha1(body.encode()).hexdigest(), body, [], [])
    assert await held.ping()


async def test_evalsha_needs_a_held_connection(redis: Redis) -> None:
    with pytest.raises(TypeError):
        await evalsha(redis, ECHO_SHA, ECHO, ["k"], [b"a", b"b", 1])


async def test_exchange_puts_error_replies_in_place(held: Redis) -> None:
    await held.script_load(ECHO)
    await held.initialize()
    assert held.connection is not None
    packed = (
        pack_evalsha(ECHO_SHA, ["k"], ["a", "b", 1])
        + pack_evalsha("0" * 40, [], [])
        + pack_evalsha(ECHO_SHA, ["k"], ["c", "d", 2])
    )
    first, missing, last = await exchange(held.connection, packed, 3)
    assert first == [b"k", b"a", b"b", 2] and last == [b"k", b"c", b"d", 3]
    assert isinstance(missing, NoScriptError)


async def test_exchange_cancelled_mid_reply_drops_the_connection(held: Redis, prefix: str) -> None:
    """A half-read connection is never reused: cancelled while waiting, it is disconnected."""
    await held.initialize()
    conn = held.connection
    assert conn is not None
    blocking = b"".join(Connection().pack_command("BLPOP", f"{prefix}:nothing", 5))
    call = asyncio.create_task(exchange(conn, blocking, 1))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not conn.is_connected
    assert await held.ping()  # the next command reconnects


async def test_reloading_loads_a_lost_script_once_and_sends_only_what_met_noscript_again(
    held: Redis, prefix: str
) -> None:
    """NOSCRIPT in a write's replies: the body is loaded and only those commands go again, once (the
    others ran: a second run would repeat their effects); with the script loaded, a write goes once."""
    await held.initialize()
    conn = held.connection
    assert conn is not None
    counter = f"{prefix}:runs"
    incr = b"".join(Connection().pack_command("INCR", counter))
    echo = pack_evalsha(ECHO_SHA, ["k"], ["a", "b", 1])
    writes: list[int] = []

    async def send(packed: bytes, count: int) -> list[object]:
        writes.append(count)
        return await exchange(conn, packed, count)

    await held.script_flush()
    assert await reloading(held, ECHO, [incr, echo], send) == [1, [b"k", b"a", b"b", 2]]
    assert writes == [2, 1] and await held.get(counter) == b"1"  # the INCR ran once
    assert await reloading(held, ECHO, [incr, echo], send) == [2, [b"k", b"a", b"b", 2]]
    assert writes == [2, 1, 2]
    # another script's error is the caller's to handle: returned in place after one reload and retry
    other = pack_evalsha("0" * 40, [], [])
    await held.script_flush()
    (missing,) = await reloading(held, ECHO, [other], send)
    assert isinstance(missing, NoScriptError)
    assert await held.script_exists(ECHO_SHA) == [True]
