"""The paced client of ``sraq bench loop``: a separate process publishing turns at a fixed rate.

Real turns come from other processes (gateways, clients), never from inside the orchestrator, so the
fixed-rate phase publishes from here: the orchestrator's event loop and CPU are its own, as in
production. Turns are published on an absolute schedule (turn ``i`` is due ``i / rate`` seconds after
the start; whatever is due goes out in one pipelined write), so arrivals are spread over time instead
of coming in large bursts, and a slow write does not lower the offered rate. Each turn's ``ts`` is
stamped just before its write: the start of the overhead measurement.

The client shares the machine's CPUs with the orchestrator it measures, so it does little per turn:
the turns are built (and validated) before the clock starts and only re-stamped when due, and it
writes over one held connection (a lone turn is a plain ``XADD``, no pool checkout, no pipeline).
``--nice N`` lowers its scheduling priority (``sraq bench loop`` passes 10 by default): on a box with
few cores the client then yields a core to the system it measures instead of competing with it, as a
client on another machine would. Its turns are stamped when written, so a client that runs late
delays turns, it does not inflate their measured overhead; ``late_turns`` shows how late it ran.

Run as ``python -m orchestrator.bench_publisher --redis-url URL --prefix P ...``; prints one JSON
object ``{"published": int, "seconds": float, "offered_turns_per_s": float, "late_turns": int,
"largest_write": int, "cpu_s": float, "nice": int}`` on stdout (``late_turns``: turns written
together with an earlier one because this process fell behind its schedule, e.g. while it had no
CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

import msgspec
import uvloop
from redis.asyncio import Redis

from ledger import Keys
from ledger.turns import Publisher, make_turn
from orchestrator.bench_turns import utterance


async def publish_paced(
    redis_url: str, keys: Keys, *, rate: float, seconds: float, conversations: int, seed: int = 17
) -> dict[str, float]:
    """Publish ``rate * seconds`` turns over ``conversations`` at ``rate`` turns/s."""
    n = int(rate * seconds)
    rng = random.Random(seed)
    turns = [make_turn(f"bench-{i % conversations}", utterance(rng), turn_id=f"r-{i}") for i in range(n)]
    redis: Redis = Redis.from_url(redis_url, socket_connect_timeout=2.0, single_connection_client=True)
    publisher = Publisher(redis, keys)
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        sent = 0
        late = 0  # turns written together with an earlier one: this process fell behind its schedule
        largest = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                # stamped now: the overhead of a turn is counted from here
                now = time.time()
                batch = [msgspec.structs.replace(turn, ts=now) for turn in turns[sent:due]]
                await publisher.publish_many(batch)
                late += len(batch) - 1
                largest = max(largest, len(batch))
                sent = due
            else:
                await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await redis.aclose()
    return {
        "published": n,
        "seconds": round(elapsed, 3),
        "offered_turns_per_s": round(n / elapsed, 1),
        # how evenly the turns went out: a client starved of CPU sends what fell due meanwhile at once
        "late_turns": late,
        "largest_write": largest,
        # this process's CPU while publishing (the turns were built before): its share of the machine
        "cpu_s": round(cpu, 4),
        "nice": os.nice(0),  # the priority it actually ran at
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench_publisher", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--conversations", type=int, required=True)
    parser.add_argument("--nice", type=int, default=0, help="added to this process's nice value (lower priority)")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    keys = Keys(prefix=args.prefix, partitions=args.partitions)
    result = uvloop.run(
        publish_paced(args.redis_url, keys, rate=args.rate, seconds=args.seconds, conversations=args.conversations)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
