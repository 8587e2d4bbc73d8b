"""Lean script calls: ``EVALSHA`` packed as RESP by hand and sent on one connection.

redis-py's command path (argument encoding, retry wrapper, response callbacks, pool checkout with its
health probe) costs more client CPU than Redis spends running our scripts: ~40 % of the relay's CPU
per outbox entry was that path (py-spy, 600 turns/s). The hot script calls (the ledger's commits, the
relay's per-entry scripts) go through here instead; everything else keeps redis-py's API.

Replies are read with the connection's own parser, so they are what redis-py returns (bytes, ints,
lists; an error reply becomes a ``ResponseError`` instance in its place). A connection whose replies
were not all read (an error, a cancellation) is disconnected, never reused half-read: redis-py
reconnects it on its next command.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

Arg = bytes | str | int


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _encode(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return b"%d" % value


def pack_bulk(value: Arg) -> bytes:
    """One argument as a RESP bulk string (to append to a :func:`pack_command_head`)."""
    return _bulk(_encode(value))


def pack_command_head(parts: Sequence[Arg], *, nargs: int) -> bytes:
    """The RESP of a command's first ``parts``, announcing ``nargs`` more arguments to follow."""
    return b"*%d\r\n" % (len(parts) + nargs) + b"".join(_bulk(_encode(p)) for p in parts)


@functools.lru_cache(maxsize=65536)
def _evalsha_head(sha: str, keys: tuple[str, ...], nargs: int) -> bytes:
    """``EVALSHA sha numkeys key...`` as RESP (the same for every turn of a conversation: cached)."""
    head = [b"*%d\r\n" % (3 + len(keys) + nargs), _bulk(b"EVALSHA"), _bulk(sha.encode()), _bulk(b"%d" % len(keys))]
    return b"".join(head + [_bulk(k.encode("utf-8")) for k in keys])


def pack_evalsha(sha: str, keys: Sequence[str], args: Sequence[Arg], *, cache_keys: bool = True) -> bytes:
    """One ``EVALSHA`` as RESP. ``cache_keys``: keep the packed head for these keys (for key sets that
    repeat, like a conversation's; keys that are new on every call would only churn the cache)."""
    if cache_keys:
        head = _evalsha_head(sha, tuple(keys), len(args))
    else:
        parts = [b"*%d\r\n" % (3 + len(keys) + len(args)), _bulk(b"EVALSHA"), _bulk(sha.encode())]
        head = b"".join([*parts, _bulk(b"%d" % len(keys)), *(_bulk(k.encode("utf-8")) for k in keys)])
    return head + b"".join(_bulk(_encode(a)) for a in args)


async def exchange(conn: Connection, packed: bytes, count: int) -> list[Any]:
    """Write ``count`` packed commands at once and read their replies (error replies in place)."""
    try:
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect()
        raise


async def reloading(
    client: Redis, body: str, commands: Sequence[bytes], send: Callable[[bytes, int], Awaitable[list[Any]]]
) -> list[Any]:
    """Send packed ``commands`` in one write (``send(packed, count)``: replies in place); the ones
    that met NOSCRIPT (Redis restarted or flushed its script cache) go again, once, after ``body`` is
    loaded on ``client``. Returns one reply per command.

    The one place every hand-packed ``EVALSHA`` path recovers from a lost script cache, as redis-py's
    ``Script`` does for its own calls. Only those commands go again: an ``EVALSHA`` that failed with
    NOSCRIPT ran nothing, while the others of the write did and must not run twice (a commit would
    come back as a duplicate, without the outbox entries its first run handed over).
    """
    replies = await send(b"".join(commands), len(commands))
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await client.script_load(body)
        again = await send(b"".join(commands[i] for i in missing), len(missing))
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


async def evalsha(client: Redis, sha: str, body: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """One script call on ``client``'s own connection (a ``single_connection_client``); loads the
    script once on NOSCRIPT (a restarted Redis). Raises the script's error reply."""
    conn = client.connection
    if conn is None:
        await client.initialize()  # creates the held connection on first use
        conn = client.connection
        if conn is None:
            raise TypeError("evalsha needs a single_connection_client")
    packed = pack_evalsha(sha, keys, args, cache_keys=False)
    (reply,) = await reloading(client, body, [packed], functools.partial(exchange, conn))
    if isinstance(reply, Exception):
        raise reply
    return reply
