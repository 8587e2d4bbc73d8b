"""Follow the decision streams of every partition (``sraq tail``, ``sraq demo``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
from redis.asyncio import Redis

from ledger import DecisionEvent, Keys

_event_decoder = msgspec.json.Decoder(DecisionEvent)


def decision_json(event: DecisionEvent, version: int) -> dict[str, object]:
    """The ``sraq tail --json`` line of a decision (INTERFACES.md; extra keys allowed)."""
    return {
        "conversation_id": event.conversation_id,
        "turn_id": event.turn_id,
        "action": event.action,
        "args": event.args,
        "tier": event.tier,
        "confidence": event.confidence,
        "latency_ms": event.latency_ms,
        "reason": event.reason,
        "event": "decision_failed" if event.reason == "undecided" else "decision",
        "ledger_version": version or event.ledger_version,
    }


def decode_decision(fields: dict[bytes, bytes]) -> dict[str, object]:
    """A decisions-stream entry as its ``sraq tail --json`` line."""
    return decision_json(_event_decoder.decode(fields[b"data"]), int(fields.get(b"lv", b"0")))


async def stream_heads(redis: Redis, keys: Keys) -> dict[str, str]:
    """The last entry id of every partition's decision stream (where "from now on" starts)."""
    streams = [pk.decisions for pk in keys.all_partitions()]
    async with redis.pipeline(transaction=False) as pipe:
        for s in streams:
            pipe.xrevrange(s, count=1)
        lasts = await pipe.execute()
    return {s: (last[0][0].decode() if last else "0-0") for s, last in zip(streams, lasts, strict=True)}


async def follow(
    redis: Redis,
    keys: Keys,
    *,
    from_start: bool = False,
    block_ms: int = 250,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[dict[str, object]]:
    """Yield every decision committed from now on (or from the start), in stream order per partition.

    Ends when ``stop`` is set (checked at least every ``block_ms``); otherwise the caller stops
    iterating (or cancels) when done.
    """
    if from_start:
        cursor = {pk.decisions: "0-0" for pk in keys.all_partitions()}
    else:
        cursor = await stream_heads(redis, keys)
    while stop is None or not stop.is_set():
        reply = await redis.xread(cursor, count=500, block=block_ms)  # type: ignore[arg-type]
        for name, entries in reply or ():
            stream = name.decode()
            for entry_id, fields in entries:
                cursor[stream] = entry_id.decode()
                line = decode_decision(fields)
                line["partition"] = keys.partition_of(str(line["conversation_id"]))
                yield line
