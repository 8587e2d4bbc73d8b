"""Helpers of the worker tests: real ``sraq workers`` / ``sraq dispatcher`` subprocesses, event reading."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from ledger import EventOp, Keys, Ledger, LedgerError
from ledger.turns import Turn, decode_entry

ROOT = Path(__file__).resolve().parent.parent


class Procs:
    """Child ``python -m orchestrator ...`` processes sharing one environment; ``close()`` kills leftovers."""

    def __init__(self, redis_url: str, keys: Keys, **env: str) -> None:
        self.env = {
            **os.environ,
            "SRAQ_REDIS_URL": redis_url,
            "SRAQ_PREFIX": keys.prefix,
            "SRAQ_PARTITIONS": str(keys.partitions),
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            env={**self.env, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("workers", "--log-level", "warning", *args, **env)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    @staticmethod
    def terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(step)


async def wait_workers(redis: Redis, n: int, within: float = 20.0) -> None:
    """Until ``n`` worker processes are connected (they name their Redis connections)."""

    async def ready() -> bool:
        clients = await redis.client_list()
        return len({c.get("name") for c in clients if str(c.get("name", "")).startswith("sraq-worker:")}) >= n

    await wait_until(ready, within)


async def task_events(redis: Redis, keys: Keys, conversation_id: str, task_id: str | None = None) -> list[Turn]:
    """Task-event turns the workers published for a conversation (oldest first)."""
    stream = keys.partition(keys.partition_of(conversation_id)).turns
    out = []
    for _id, fields in await redis.xrange(stream):
        turn = decode_entry(fields)
        mine = turn.conversation_id == conversation_id and turn.is_task_event
        if mine and (task_id is None or turn.task_id == task_id):
            out.append(turn)
    return out


def kinds(turns: list[Turn]) -> list[tuple[str, int | None]]:
    return [(t.event.value if t.event else "", t.attempt) for t in turns]


async def apply_events(ledger: Ledger, turns: list[Turn]) -> list[tuple[Turn, LedgerError | None]]:
    """What the orchestrator does with task-event turns: apply each as an ``EventOp`` (no model needed).

    Stands in for the orchestrator runtime in tests of the worker side alone.
    """
    out: list[tuple[Turn, LedgerError | None]] = []
    for turn in turns:
        assert turn.task_id is not None and turn.event is not None
        op = EventOp(turn.task_id, turn.event, text=turn.content, attempt=turn.attempt or 1)
        try:
            await ledger.apply(turn.conversation_id, None, turn.turn_id, [op])
            out.append((turn, None))
        except LedgerError as exc:
            out.append((turn, exc))
    return out
