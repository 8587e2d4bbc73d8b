"""The paced client of ``sraq bench loop``: a separate process publishing turns at a fixed rate.

Real turns come from other processes (gateways, clients), never from inside the orchestrator, so the
fixed-rate phase publishes from here: the orchestrator's event loop and CPU are its own, as in
production. Turns are published on an absolute schedule (turn ``i`` is due ``i / rate`` seconds after
the start; whatever is due goes out in one write), so arrivals are spread over time instead of coming
in large bursts, and a slow write does not lower the offered rate. Each turn's ``ts`` is stamped just
before its write: the start of the overhead measurement. ``--warmup N`` publishes N turns (ids
``w-<i>``) first, on the same schedule and without a pause; the benchmark leaves them out of its
figures (see :mod:`orchestrator.benchloop`).

The client shares the machine's CPUs with the orchestrator it measures (a real client would be on
another machine), so it does as little per turn as it can. Before the clock starts, every turn is
validated, encoded as :class:`~ledger.turns.Publisher` encodes it (same stream, same field) and
packed into its ``XADD`` command; when a turn is due, only the 8 bytes of its ``ts`` are written into
the packed command (:class:`StampedXadd`) and the command goes out on one held connection. The
process is synchronous (no event loop: a sleep and a socket write per turn) and reads Redis's replies
after the last turn, each checked (a refused write fails the run). On this project's 2-vCPU VM at
1,000 turns/s that is ~0.06 ms of CPU per turn; the asyncio client it replaced (redis-py per turn)
took ~0.27 ms, a fifth of the machine's load at that rate.
``--nice N`` lowers its scheduling priority (``sraq bench loop`` passes 10 by default): on a box with
few cores the client then yields a core to the system it measures instead of competing with it, as a
client on another machine would. Its turns are stamped when written, so a client that runs late
delays turns, it does not inflate their measured overhead; ``late_turns`` shows how late it ran.

Run as ``SRAQ_REDIS_URL=URL python -m orchestrator.bench_publisher --prefix P ...``; prints one JSON
object ``{"published": int, "warmup": int, "seconds": float, "offered_turns_per_s": float, "late_turns": int,
"largest_write": int, "cpu_s": float, "nice": int}`` on stdout (``late_turns``: turns written
together with an earlier one because this process fell behind its schedule, e.g. while it had no
CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import time

import msgspec
from redis import Redis
from redis.connection import Connection

from ledger import Keys
from ledger.turns import Turn, encode_turn, make_turn, validate_turn
from orchestrator.bench_turns import utterance

#: a ``ts`` no real turn carries, found in the packed command to locate the field's 8 bytes
_SENTINEL_TS = 1234567890.0987654
#: msgpack float64: the marker byte, then the big-endian IEEE 754 double
_FLOAT64 = struct.Struct(">d")


class StampedXadd:
    """One turn's ``XADD`` command, packed once; :meth:`stamped` writes the publish time into it."""

    __slots__ = ("_offset", "_template")

    def __init__(self, conn: Connection, stream: str, turn: Turn) -> None:
        validate_turn(turn)
        fields = encode_turn(msgspec.structs.replace(turn, ts=_SENTINEL_TS))
        args: list[str | bytes] = ["XADD", stream, "*"]
        for name, value in fields.items():
            args += [name, value]
        packed = b"".join(conn.pack_command(*args))  # type: ignore[no-untyped-call]
        marker = b"\xcb" + _FLOAT64.pack(_SENTINEL_TS)
        if packed.count(marker) != 1:  # the encoding changed: stamping would corrupt the entry
            raise ValueError("cannot locate the turn's ts in its encoding")
        self._template = bytearray(packed)
        self._offset = packed.index(marker) + 1

    def stamped(self, ts: float) -> bytes:
        """The command with ``ts`` as the turn's publish time."""
        _FLOAT64.pack_into(self._template, self._offset, ts)
        return bytes(self._template)


def publish_paced(
    redis_url: str,
    keys: Keys,
    *,
    rate: float,
    seconds: float,
    conversations: int,
    warmup: int = 0,
    seed: int = 17,
) -> dict[str, float]:
    """Publish ``warmup`` turns (ids ``w-<i>``), then ``rate * seconds`` measured ones (``r-<i>``) on
    the same schedule, over ``conversations`` at ``rate`` turns/s."""
    measured = int(rate * seconds)
    n = warmup + measured
    ids = [f"w-{i}" for i in range(warmup)] + [f"r-{i}" for i in range(measured)]
    rng = random.Random(seed)
    redis: Redis = Redis.from_url(redis_url, socket_connect_timeout=2.0, single_connection_client=True)
    try:
        conn = redis.connection
        assert conn is not None  # single_connection_client: connected by the constructor
        turns = [make_turn(f"bench-{i % conversations}", utterance(rng), turn_id=tid) for i, tid in enumerate(ids)]
        commands = [StampedXadd(conn, keys.partition(keys.partition_of(t.conversation_id)).turns, t) for t in turns]
        started = time.perf_counter()
        cpu_started = time.process_time()
        sent = 0
        late = 0  # turns written together with an earlier one: this process fell behind its schedule
        largest = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                now = time.time()  # stamped now: the overhead of a turn is counted from here
                conn.send_packed_command([b"".join(c.stamped(now) for c in commands[sent:due])], check_health=False)
                late += due - sent - 1
                largest = max(largest, due - sent)
                sent = due
            else:
                time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        for _ in range(n):
            conn.read_response()  # raises on a refused write (redis.ResponseError)
    finally:
        redis.close()
    return {
        "published": n,
        "warmup": warmup,
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
    # the URL may hold a password: from the environment by default, where other users' ``ps`` cannot see it
    parser.add_argument("--redis-url", default=os.environ.get("SRAQ_REDIS_URL"), help="default: $SRAQ_REDIS_URL")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--conversations", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0, help="turns published before the measured ones")
    parser.add_argument("--nice", type=int, default=0, help="added to this process's nice value (lower priority)")
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("--redis-url or SRAQ_REDIS_URL is required")
    if args.nice:
        os.nice(args.nice)
    keys = Keys(prefix=args.prefix, partitions=args.partitions)
    result = publish_paced(
        args.redis_url, keys, rate=args.rate, seconds=args.seconds, conversations=args.conversations, warmup=args.warmup
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
