"""``sraq bench handoff``: publish a ``start_task`` turn -> the task handler starts; cancel -> it stops.

Everything real except the model: an in-process orchestrator with the ``scripted`` router at zero
latency (so no model time is included), its hosted outbox relay, and ``workers`` separate ``sraq
workers`` processes running the ``demo`` handler with one long step (so a task is still running when
it is cancelled). Per iteration, on a fresh conversation:

* ``handoff``: ``time.time()`` before publishing ``start: ...`` -> the ``ts`` of the worker's
  ``started`` event turn (taken just before the handler is called);
* ``cancel``: ``time.time()`` before publishing ``cancel: task-1: ...`` -> the moment the handler got
  ``CancelledError`` (recorded by the worker in the task's run record). The cancel is sent after a
  random 0..2 poll delays, so it does not always land at the same phase of the worker's poll cycle.

Both clocks are the same host's wall clock. Iterations run one after another (latency, not load).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis

from ledger import Keys, TaskEvent
from ledger.turns import Publisher, decode_entry, make_turn
from orchestrator.commands.common import percentile
from orchestrator.runtime import Orchestrator
from orchestrator.scripted import ScriptedBackend
from orchestrator.settings import Settings
from orchestrator.turn_processor import TurnRecord
from workers.queue import drop_deployment
from workers.worker import CLIENT_NAME_PREFIX

WORKER_START_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 10.0


@dataclass
class _Run:
    keys: Keys
    redis: Redis
    records: dict[tuple[str, str], TurnRecord] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)

    def observe(self, record: TurnRecord) -> None:
        self.records[(record.conversation_id, record.turn_id)] = record

    async def started_event_ts(self, conv: str, task_id: str) -> float:
        """Wait for the ``started`` event of ``task_id`` on the conversation's stream; its timestamp."""
        stream = self.keys.partition(self.keys.partition_of(conv)).turns
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = await self.redis.xread({stream: self.cursors.get(stream, "0-0")}, count=100, block=200)
            for _s, entries in reply or []:
                for entry_id, fields in entries:
                    self.cursors[stream] = entry_id.decode()
                    turn = decode_entry(fields)
                    if turn.conversation_id == conv and turn.task_id == task_id and turn.event is TaskEvent.STARTED:
                        return turn.ts
        raise TimeoutError(f"{conv}/{task_id} did not start within {STEP_TIMEOUT_S}s")

    async def stopped_at(self, conv: str, task_id: str) -> float:
        run_key = self.keys.task(conv, task_id).run
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            raw = await self.redis.hget(run_key, "stopped_at")  # type: ignore[misc]
            if raw is not None:
                return float(raw)
            await asyncio.sleep(0.001)
        raise TimeoutError(f"{conv}/{task_id} did not stop within {STEP_TIMEOUT_S}s")


def _spawn_workers(settings: Settings, n: int, poll_delay_s: float) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "SRAQ_REDIS_URL": settings.redis_url,
        "SRAQ_PREFIX": settings.prefix,
        "SRAQ_PARTITIONS": str(settings.partitions),
        "SRAQ_WORKER_POLL_DELAY_S": str(poll_delay_s),
        "SRAQ_DEMO_STEPS": "1",
        "SRAQ_DEMO_STEP_S": "120",
        "SRAQ_WORKER_SHUTDOWN_GRACE_S": "0",
    }
    cmd = [sys.executable, "-m", "orchestrator", "workers", "--handler", "demo", "--log-level", "warning"]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


async def _wait_workers(redis: Redis, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a worker process exited with {dead[0].returncode} during start-up")
        names = {c.get("name", "") for c in await redis.client_list()}
        if sum(str(n).startswith(CLIENT_NAME_PREFIX + ":") for n in names) >= len(procs):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{len(procs)} workers did not connect within {WORKER_START_TIMEOUT_S}s")


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


async def bench_handoff(base: Settings, *, iterations: int, workers: int, poll_delay_s: float) -> dict[str, object]:
    """Run the benchmark against ``base.redis_url`` under a throw-away key prefix; returns the JSON result."""
    prefix = f"{base.prefix}-handoff-{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={"prefix": prefix, "intent_tiers": "scripted", "metrics_port": 0, "relay_outbox": True}
    )
    keys = settings.keys()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0)
    run = _Run(keys, redis)
    orch = Orchestrator(settings, ScriptedBackend(latency_ms=0.0), observer=run.observe)
    procs: list[subprocess.Popen[bytes]] = []
    handoff: list[float] = []
    commit_to_start: list[float] = []
    cancel: list[float] = []
    try:
        await redis.ping()
        procs = _spawn_workers(settings, workers, poll_delay_s)
        await orch.start()
        await _wait_workers(redis, procs)
        publisher = Publisher(redis, keys)
        warmup = min(10, max(2, iterations // 10))
        for i in range(warmup + iterations):
            conv = f"handoff-{i}"
            t_start = time.time()
            turn = await publisher.say(conv, f"start: benchmark task {i}")
            started = await run.started_event_ts(conv, "task-1")
            # a real cancel comes at a random moment of the worker's poll cycle, not right after the start
            await asyncio.sleep(random.uniform(0, 2 * poll_delay_s))
            t_cancel = time.time()
            await publisher.publish(make_turn(conv, "cancel: task-1: benchmark"))
            stopped = await run.stopped_at(conv, "task-1")
            if i >= warmup:
                handoff.append((started - t_start) * 1000)
                cancel.append((stopped - t_cancel) * 1000)
                record = run.records.get((conv, turn.turn_id))
                if record is not None:
                    commit_to_start.append((started - record.committed_at) * 1000)
    finally:
        await orch.stop()
        await asyncio.to_thread(_stop_workers, procs)
        with contextlib.suppress(Exception):
            await drop_deployment(redis, Keys(prefix=prefix, partitions=base.partitions))
        await redis.aclose()

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(percentile(values, 50), 2),
            "p99": round(percentile(values, 99), 2),
            "max": round(max(values, default=0.0), 2),
        }

    return {
        "handoff_ms": stats(handoff),
        "cancel_ms": stats(cancel),
        "workers": workers,
        "iterations": len(handoff),
        "poll_delay_ms": round(poll_delay_s * 1000, 3),
        "commit_to_start_ms": stats(commit_to_start),
    }
