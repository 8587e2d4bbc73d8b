"""``sraq bench loop``: what the orchestrator loop costs per turn, beyond the model.

Three phases, each on its own throw-away key prefix (deleted afterwards), one Redis, one orchestrator
process (the fixed-rate phase's publisher is a separate process, as clients are):

1. **saturated**: N turns over C conversations are published first; an in-process Orchestrator then
   processes them as fast as it can. Throughput = N / (time from start to the last commit).
2. **overhead at a fixed rate** (default 1,000 turns/s for 3 s): a paced publisher process
   (:mod:`orchestrator.bench_publisher`, turns spread evenly over time, at a lower scheduling
   priority: ``--client-nice``, default 10) feeds a running Orchestrator. Per turn,
   ``overhead = commit time - publish time - decision time`` (the router's own time is excluded;
   the publish write, stream delivery, lane queueing, the snapshot and the commit are included).
   Also reported:
   ``processing_ms`` = read-to-commit minus decision time, and ``end_to_end_ms`` = commit time -
   publish time (decision included). The client first publishes ``--warmup`` seconds of turns
   (default 0.5 s, ``warmup_turns`` in the JSON) at the same rate, without a pause, and these are
   left out of every figure but the CPU per turn: a process's first turns pay one-off costs (the
   first snapshot read of each conversation, the first decisions of a cold model process, first
   calls of every code path), which in a 3 s run made most of the slowest 1% (measured: 25 to 39 of
   the 50 slowest of 5,000 turns came in the first 40 ms). With the embedded model in a child process
   (``SRAQ_EMBEDDED_PROCESSES``), a turn's decision time includes the pipe round trip and its wait in
   the child's queue, so compare ``end_to_end_ms`` across the two modes.
3. **floor**: the same N turns read by a bare loop that only does ``XREADGROUP`` + the ledger's Lua
   apply (same script, same transcript message and decision event, XACK inside): one reader per
   partition, each read batch applied in one pipeline; no snapshot, no router, no lanes, no order
   per conversation. ``ratio_to_floor`` = saturated / floor.

With a real model the saturated phase is bound by the model's CPU time, so it is also run with the
scripted test router (``throughput_without_model_turns_per_s``): the loop's own ceiling.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from intent.backend import Backend
from ledger import Ack, ApplyCall, DecisionEvent, DecisionMeta, Keys, Ledger, Message, NoteOp
from ledger.turns import Publisher, Turn, decode_entry, make_turn
from orchestrator.bench_cpu import CpuSample, per_turn
from orchestrator.bench_turns import utterance
from orchestrator.partition import GROUP
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.settings import Settings
from orchestrator.turn_processor import TurnRecord
from workers.queue import drop_deployment


@dataclass(slots=True)
class LoopBenchConfig:
    turns: int = 10_000
    conversations: int = 200
    rate: float = 1000.0
    rate_seconds: float = 3.0
    #: nice value of the fixed-rate client process (bench_publisher.py says why)
    client_nice: int = 10
    #: seconds of turns published at the rate before the measured ones (not counted; see _paced)
    warmup_seconds: float = 0.5


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[k])


def _turns(conversations: int, n: int, tag: str) -> list[Turn]:
    """``n`` turns round-robin over the conversations (order within each conversation = list order)."""
    rng = random.Random(13)
    return [make_turn(f"bench-{i % conversations}", utterance(rng), turn_id=f"{tag}-{i}") for i in range(n)]


def _bench_settings(settings: Settings, prefix: str) -> Settings:
    return settings.model_copy(update={"prefix": prefix, "metrics_port": 0, "instance_id": f"bench-{prefix}"})


@dataclass(frozen=True, slots=True)
class SaturatedRun:
    throughput_turns_per_s: float
    seconds: float
    model_ms_mean: float
    cpu_ms_per_turn: dict[str, float]


async def _saturated(settings: Settings, redis: Redis, backend: Backend, cfg: LoopBenchConfig) -> SaturatedRun:
    prefix = f"{settings.prefix}-bench-{uuid.uuid4().hex[:8]}"
    s = _bench_settings(settings, prefix)
    keys = s.keys()
    done = asyncio.Event()
    records: list[TurnRecord] = []

    def observe(record: TurnRecord) -> None:
        records.append(record)
        if len(records) >= cfg.turns:
            done.set()

    try:
        publisher = Publisher(redis, keys)
        turns = _turns(cfg.conversations, cfg.turns, "s")
        for i in range(0, len(turns), 1000):
            await publisher.publish_many(turns[i : i + 1000])
        orch = Orchestrator(s, backend, observer=observe)
        cpu_before = await CpuSample.take(redis)
        started = time.perf_counter()
        await orch.start()
        try:
            await asyncio.wait_for(done.wait(), timeout=max(60.0, cfg.turns / 100))
            elapsed = time.perf_counter() - started
            cpu = per_turn(cpu_before, await CpuSample.take(redis), cfg.turns)
        finally:
            await orch.stop()
    finally:
        await drop_deployment(redis, keys)
    model = [r.model_ms for r in records]
    return SaturatedRun(cfg.turns / elapsed, elapsed, sum(model) / len(model), cpu)


async def _paced(settings: Settings, redis: Redis, backend: Backend, cfg: LoopBenchConfig) -> dict[str, object]:
    prefix = f"{settings.prefix}-bench-{uuid.uuid4().hex[:8]}"
    s = _bench_settings(settings, prefix)
    keys = s.keys()
    n = int(cfg.rate * cfg.rate_seconds)
    warmup = int(cfg.rate * cfg.warmup_seconds)
    records: list[TurnRecord] = []
    seen = 0
    done = asyncio.Event()

    def observe(record: TurnRecord) -> None:
        nonlocal seen
        seen += 1
        if not record.turn_id.startswith("w-"):  # the client's warm-up turns are not measured
            records.append(record)
        if seen >= n + warmup:
            done.set()

    orch = Orchestrator(s, backend, observer=observe)
    try:
        await orch.start()
        cpu_before = await CpuSample.take(redis)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.bench_publisher",
            "--prefix", prefix, "--partitions", str(s.partitions), "--rate", str(cfg.rate),
            "--seconds", str(cfg.rate_seconds), "--conversations", str(cfg.conversations),
            "--nice", str(cfg.client_nice), "--warmup", str(warmup),
            # the URL through the environment, not argv: it may hold a password (ps shows argv)
            env={**os.environ, "SRAQ_REDIS_URL": settings.redis_url},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await client.communicate()
        # the model processes' share is read while they run; the client reports its own (it has exited)
        cpu_after = await CpuSample.take(redis, exclude=frozenset({client.pid}))
        if client.returncode != 0:
            raise RuntimeError(f"bench publisher exited with {client.returncode}")
        client_report = json.loads(out.decode().strip().splitlines()[-1])
        offered = float(client_report["offered_turns_per_s"])
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        await orch.stop()
        await drop_deployment(redis, keys)
    # the CPU samples span the whole client run, warm-up included
    cpu = per_turn(cpu_before, cpu_after, n + warmup, float(client_report["cpu_s"]))
    e2e = [(r.committed_at - r.published_at) * 1000 for r in records]
    overhead = [max(0.0, ms - r.model_ms) for ms, r in zip(e2e, records, strict=True)]
    processing = [r.overhead_ms for r in records]
    model = [r.model_ms for r in records]
    return {
        "turns": len(records),  # the measured turns: every one committed, warm-up excluded
        "warmup_turns": warmup,
        "offered_turns_per_s": round(offered, 1),
        "client_nice": int(client_report["nice"]),
        "client_late_turns": int(client_report["late_turns"]),
        "client_largest_write": int(client_report["largest_write"]),
        "overhead_ms": {"p50": round(percentile(overhead, 50), 3), "p99": round(percentile(overhead, 99), 3)},
        # publish to commit, the decision included: what a client waits for
        "end_to_end_ms": {"p50": round(percentile(e2e, 50), 3), "p99": round(percentile(e2e, 99), 3)},
        "processing_ms": {"p50": round(percentile(processing, 50), 3), "p99": round(percentile(processing, 99), 3)},
        "model_ms": {"p50": round(percentile(model, 50), 3), "p99": round(percentile(model, 99), 3)},
        # CPU milliseconds per turn of each process while the client published (see bench_cpu.py)
        "cpu_ms_per_turn": cpu,
    }


async def _floor(settings: Settings, redis: Redis, cfg: LoopBenchConfig) -> float:
    """Bare XREADGROUP + Lua apply (+ XACK inside) over the same turns; returns turns/s."""
    prefix = f"{settings.prefix}-bench-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix=prefix, partitions=settings.partitions)
    ledger = Ledger(redis, keys, transcript_max=settings.transcript_max)
    try:
        publisher = Publisher(redis, keys)
        turns = _turns(cfg.conversations, cfg.turns, "f")
        for i in range(0, len(turns), 1000):
            await publisher.publish_many(turns[i : i + 1000])
        for pk in keys.all_partitions():
            with contextlib.suppress(Exception):
                await redis.xgroup_create(pk.turns, GROUP, id="0", mkstream=True)

        def call(stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> ApplyCall:
            turn = decode_entry(fields)
            return ApplyCall(
                turn.conversation_id, None, turn.turn_id, [NoteOp("")],
                decision=DecisionMeta(action="noop", tier="floor", confidence=1.0, latency_ms=0.0),
                messages=[Message(role=turn.role.value, content=turn.content, turn_id=turn.turn_id)],
                ack=Ack(stream, GROUP, entry_id.decode()),
                event=DecisionEvent(conversation_id=turn.conversation_id, turn_id=turn.turn_id, action="noop",
                                    args={}, tier="floor", confidence=1.0, latency_ms=0.0),
            )  # fmt: skip

        async def reader(stream: str) -> None:
            # one XREADGROUP per batch, then every apply of the batch in one pipeline
            while True:
                reply = await redis.xreadgroup(GROUP, "floor", {stream: ">"}, count=settings.read_batch)
                if not reply:
                    return
                calls = [call(stream, eid, fields) for _name, entries in reply for eid, fields in entries]
                for result in await ledger.apply_many(calls):
                    if isinstance(result, Exception):
                        raise result

        started = time.perf_counter()
        await asyncio.gather(*(reader(pk.turns) for pk in keys.all_partitions()))
        elapsed = time.perf_counter() - started
    finally:
        await drop_deployment(redis, keys)
    return cfg.turns / elapsed


async def bench_loop(settings: Settings, backend: Backend, cfg: LoopBenchConfig) -> dict[str, object]:
    """Run the three phases; returns the ``sraq bench loop --json`` object."""
    redis: Redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0)
    try:
        await redis.ping()
        saturated = await _saturated(settings, redis, backend, cfg)
        # the same loop with the scripted router (microseconds per decision): the loop's own ceiling
        bare = ScriptedBackend()
        no_model = saturated if backend.name == bare.name else await _saturated(settings, redis, bare, cfg)
        paced = await _paced(settings, redis, backend, cfg)
        floor = await _floor(settings, redis, cfg)
    finally:
        await redis.aclose()
    throughput = saturated.throughput_turns_per_s
    loop_only = no_model.throughput_turns_per_s
    return {
        "turns": cfg.turns,
        "conversations": cfg.conversations,
        "throughput_turns_per_s": round(throughput, 1),
        "overhead_ms": paced["overhead_ms"],
        "floor_turns_per_s": round(floor, 1),
        "ratio_to_floor": round(throughput / floor, 3),
        "backend": getattr(backend, "name", type(backend).__name__),
        "model_ms_mean_saturated": round(saturated.model_ms_mean, 4),
        # CPU milliseconds per turn of each process in the saturated phase (see bench_cpu.py)
        "cpu_ms_per_turn_saturated": saturated.cpu_ms_per_turn,
        "throughput_without_model_turns_per_s": round(loop_only, 1),
        "ratio_to_floor_without_model": round(loop_only / floor, 3),
        "at_rate": paced,
        "partitions": settings.partitions,
        "embedded_processes": settings.embedded_processes,
        "max_in_flight": settings.max_in_flight,
    }
