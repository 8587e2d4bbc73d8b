"""Helpers of the orchestrator tests: settings, polling, subprocess instances, exactly-once checks."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from intent.backend import Decision, DecisionRequest
from ledger import Keys, Ledger
from orchestrator.local_redis import free_port
from orchestrator.partition import GROUP
from orchestrator.scripted import ScriptedBackend
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def loop_settings(redis_url: str, prefix: str, **overrides: object) -> Settings:
    """Fast settings for tests: 4 partitions, scripted router, short lease and block times."""
    base: dict[str, object] = {
        "redis_url": redis_url, "prefix": prefix, "partitions": 4, "intent_tiers": "scripted",
        "metrics_port": 0, "lease_ms": 1500, "read_block_ms": 100, "grace_s": 5.0,
    }  # fmt: skip
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


async def wait_until(pred: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def pending_total(redis: Redis, keys: Keys) -> int:
    total = 0
    for pk in keys.all_partitions():
        if not await redis.exists(pk.turns):
            continue
        try:
            summary = await redis.xpending(pk.turns, GROUP)
        except Exception:  # no group yet
            continue
        total += int(summary["pending"])
    return total


async def applied_total(redis: Redis, keys: Keys, conversations: list[str]) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for conv in conversations:
            pipe.hget(keys.conversation(conv).meta, "applied_turns")
        values = await pipe.execute()
    return sum(int(v or 0) for v in values)


async def dead_letters(redis: Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    for pk in keys.all_partitions():
        out += [fields for _id, fields in await redis.xrange(pk.dead)]
    return out


async def assert_exactly_once(ledger: Ledger, expected: dict[str, list[str]]) -> None:
    """Every conversation applied exactly its turns, in publish order; versions match the audit trail."""
    for conv, turn_ids in expected.items():
        snap = await ledger.snapshot(conv)
        audit = await ledger.audit(conv)
        audited = [e.turn_id for e in audit]
        # one apply per turn; a task-event turn may write two audit entries with the same version
        order = list(dict.fromkeys(audited))
        assert order == turn_ids, f"{conv}: applied order {order[:5]}... != published {turn_ids[:5]}..."
        assert snap.applied_turns == len(turn_ids), f"{conv}: applied {snap.applied_turns} != {len(turn_ids)}"
        versions = [e.ledger_version for e in audit]
        assert sorted(set(versions)) == list(range(1, len(turn_ids) + 1)), f"{conv}: audit versions {versions}"
        assert snap.version == len(turn_ids)


class Instance:
    """An orchestrator subprocess (``python -m orchestrator orchestrator``) with its own /health port."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.env = {
            **os.environ,
            "SRAQ_REDIS_URL": redis_url, "SRAQ_PREFIX": prefix, "SRAQ_PARTITIONS": "16",
            "SRAQ_INTENT_TIERS": "scripted", "SRAQ_METRICS_PORT": str(self.port), "SRAQ_METRICS_HOST": "127.0.0.1",
            "SRAQ_LEASE_MS": "1500", "SRAQ_READ_BLOCK_MS": "100", "SRAQ_LOG_FORMAT": "json",
            "SRAQ_INSTANCE_ID": name, **env,
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self) -> Instance:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "orchestrator"], env=self.env, cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as resp:
                data: dict[str, object] = json.loads(resp.read())
                return data
        except OSError:
            return None

    def partitions(self) -> list[int]:
        h = self.health()
        return list(h["partitions"]) if h and h.get("ok") else []  # type: ignore[call-overload]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._close_log()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class JitterRouter:
    """The scripted router's decisions after a random wait of up to ``max_ms``: turns that are not
    kept in order by the loop finish out of their arrival order."""

    name = "scripted"

    def __init__(self, max_ms: float, seed: int = 7) -> None:
        self.inner = ScriptedBackend()
        self.max_s = max_ms / 1000
        self.rng = random.Random(seed)

    async def decide(self, request: DecisionRequest) -> Decision:
        await asyncio.sleep(self.rng.uniform(0, self.max_s))
        return await self.inner.decide(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class GateRouter:
    """Holds every decision until ``gate`` is set, counting the decisions held at once (``waiting``,
    its high-water mark ``peak``) and by conversation."""

    name = "scripted"

    def __init__(self) -> None:
        self.inner = ScriptedBackend()
        self.gate = asyncio.Event()
        self.waiting = 0
        self.peak = 0
        self.by_conversation: dict[str, int] = {}

    async def decide(self, request: DecisionRequest) -> Decision:
        conv = request.conversation_id
        self.waiting += 1
        self.peak = max(self.peak, self.waiting)
        self.by_conversation[conv] = self.by_conversation.get(conv, 0) + 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
            self.by_conversation[conv] -= 1
        return await self.inner.decide(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
