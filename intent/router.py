"""The speed-first router: a cascade of tiers, each with a confidence threshold and a deadline.

A tier's decision is accepted when its (calibrated) confidence is at or above the tier's threshold.
Otherwise — low confidence, an error, a timeout, or an invalid output (which is never applied; its
raw text goes into the path) — the next tier is asked. When no tier accepts, :class:`Undecided`
carries the whole path and the orchestrator commits a safe ``noop``. Set the last tier's threshold to
0 to always accept its answer.

Optional hedging: a tier with ``hedge_after_s`` that has not answered by then (its p95, say) starts
the next tier in parallel; the first acceptable answer wins and the other request is cancelled.

Every decision carries its path (tier, outcome, confidence, latency per attempt) and the router keeps
counters for metrics: decisions, escalations, undecided, and per-tier outcomes and latency
histograms (:meth:`Router.stats`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from intent.backend import Backend, BackendTimeout, Decision, DecisionRequest, TierAttempt, Undecided
from intent.errors import InvalidDecision

#: Upper bounds (ms) of the per-tier latency histogram buckets (the last bucket is +inf).
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 150, 200, 300, 500, 1000, 2000, 4000, 8000, 15000, 30000)
_RAW_KEPT = 2000  # characters of an invalid output kept in the path


@dataclass(frozen=True)
class Tier:
    """One step of the cascade."""

    backend: Backend
    threshold: float = 0.0
    deadline_s: float = 1.0
    hedge_after_s: float | None = None

    @property
    def name(self) -> str:
        return self.backend.name


@dataclass
class TierStats:
    """Counters of one tier: attempts by outcome and a latency histogram."""

    outcomes: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0

    def observe(self, outcome: str, latency_ms: float) -> None:
        self.outcomes[outcome] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        self.latency_sum_ms += latency_ms

    def snapshot(self) -> dict[str, Any]:
        return {
            "attempts": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes),
            "latency_ms_buckets": {str(b): n for b, n in zip((*LATENCY_BUCKETS_MS, "inf"), self.buckets, strict=True)},
            "latency_ms_sum": round(self.latency_sum_ms, 3),
        }


@dataclass
class RouterStats:
    decisions: int = 0
    escalated: int = 0  # decisions (or undecided turns) that needed more than the first tier
    undecided: int = 0
    accepted_by: Counter[str] = field(default_factory=Counter)
    tiers: dict[str, TierStats] = field(default_factory=dict)

    @property
    def escalation_rate(self) -> float:
        total = self.decisions + self.undecided
        return self.escalated / total if total else 0.0


class Router:
    """A :class:`~intent.backend.Backend` that cascades over its tiers."""

    def __init__(self, tiers: Sequence[Tier], name: str = "cascade") -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        self.tiers = list(tiers)
        self.name = name
        self._stats = RouterStats(tiers={t.name: TierStats() for t in self.tiers})
        self._log = structlog.get_logger("sraq.intent.router")

    async def start(self) -> None:
        """Start every tier that has a ``start`` (health check, warm-up)."""
        for tier in self.tiers:
            start = getattr(tier.backend, "start", None)
            if start is not None:
                await start()

    async def aclose(self) -> None:
        for tier in self.tiers:
            await tier.backend.aclose()

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: escalation rate, per-tier outcomes and latency histograms."""
        s = self._stats
        return {
            "decisions": s.decisions,
            "escalated": s.escalated,
            "undecided": s.undecided,
            "escalation_rate": round(s.escalation_rate, 6),
            "accepted_by": dict(s.accepted_by),
            "tiers": {name: t.snapshot() for name, t in s.tiers.items()},
        }

    async def decide(self, request: DecisionRequest) -> Decision:
        if all(t.hedge_after_s is None for t in self.tiers):
            return await self._decide_sequential(request)
        return await self._decide_hedged(request)

    def _sub_request(self, tier: Tier, request: DecisionRequest) -> DecisionRequest:
        deadline = time.monotonic() + tier.deadline_s
        if request.deadline is not None:
            deadline = min(deadline, request.deadline)
        return msgspec.structs.replace(request, deadline=deadline)

    async def _decide_sequential(self, request: DecisionRequest) -> Decision:
        """The common case (no hedging): ask the tiers one after another, inline (no extra tasks)."""
        t0 = time.perf_counter()
        path: list[TierAttempt] = []
        for tier in self.tiers:
            start = time.perf_counter()
            try:
                result: Decision | BaseException = await self._ask(tier, self._sub_request(tier, request))
            except Exception as exc:
                result = exc
            attempt, decision = self._judge(tier, result, start)
            path.append(attempt)
            if decision is not None:
                self._record(path, accepted=tier.name)
                return msgspec.structs.replace(decision, path=tuple(path), latency_ms=(time.perf_counter() - t0) * 1000)
        self._record(path, accepted=None)
        raise Undecided(f"no tier accepted ({'; '.join(f'{a.tier}: {a.outcome}' for a in path)})", path)

    async def _decide_hedged(self, request: DecisionRequest) -> Decision:
        """Tiers as tasks, so a slow tier can be hedged by starting the next one in parallel."""
        t0 = time.perf_counter()
        path: list[TierAttempt] = []
        running: dict[asyncio.Task[Decision], int] = {}
        started: dict[int, float] = {}
        next_tier = 0

        def launch() -> None:
            nonlocal next_tier
            i, next_tier = next_tier, next_tier + 1
            tier = self.tiers[i]
            sub = self._sub_request(tier, request)
            task = asyncio.create_task(self._ask(tier, sub), name=f"sraq-router-{tier.name}-{request.turn_id}")
            running[task] = i
            started[i] = time.perf_counter()

        launch()
        try:
            while running:
                done = await self._wait(running, started, next_tier)
                if not done:  # hedge: the newest tier is past its hedge budget
                    launch()
                    continue
                for task in sorted(done, key=running.__getitem__):
                    i = running.pop(task)
                    result = task.exception() or task.result()
                    attempt, decision = self._judge(self.tiers[i], result, started[i])
                    path.append(attempt)
                    if decision is not None:
                        await self._cancel(running, started, path)
                        self._record(path, accepted=self.tiers[i].name)
                        return msgspec.structs.replace(
                            decision, path=tuple(path), latency_ms=(time.perf_counter() - t0) * 1000
                        )
                if not running and next_tier < len(self.tiers):
                    launch()
        finally:
            await self._cancel(running, started, path)
        self._record(path, accepted=None)
        reason = "; ".join(f"{a.tier}: {a.outcome}" for a in path)
        raise Undecided(f"no tier accepted ({reason})", path)

    async def _cancel(
        self, running: dict[asyncio.Task[Decision], int], started: dict[int, float], path: list[TierAttempt]
    ) -> None:
        """Cancel the attempts still running (a hedge that lost), recording them in the path."""
        if not running:
            return
        for task, i in running.items():
            task.cancel()
            latency_ms = (time.perf_counter() - started[i]) * 1000
            path.append(TierAttempt(tier=self.tiers[i].name, outcome="cancelled", latency_ms=latency_ms))
        tasks = list(running)
        running.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait(
        self, running: dict[asyncio.Task[Decision], int], started: dict[int, float], next_tier: int
    ) -> set[asyncio.Task[Decision]]:
        timeout = None
        newest = max(running.values())
        hedge = self.tiers[newest].hedge_after_s
        if hedge is not None and next_tier == newest + 1 and next_tier < len(self.tiers):
            timeout = max(0.0, started[newest] + hedge - time.perf_counter())
        done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return done

    @staticmethod
    async def _ask(tier: Tier, request: DecisionRequest) -> Decision:
        left = request.remaining()
        if left is not None and left <= 0:
            raise BackendTimeout(tier.name, "no time left for this tier")
        async with asyncio.timeout(left):  # the backend enforces it too; this is the router's guarantee
            return await tier.backend.decide(request)

    def _judge(self, tier: Tier, result: Decision | BaseException, start: float) -> tuple[TierAttempt, Decision | None]:
        """Classify one tier's answer (or failure) into a path step; the decision when accepted."""
        latency_ms = (time.perf_counter() - start) * 1000
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # KeyboardInterrupt and friends are not a tier's failure
        if isinstance(result, Decision):
            decision = result
            ok = decision.confidence >= tier.threshold
            attempt = TierAttempt(
                tier=tier.name,
                outcome="accepted" if ok else "low_confidence",
                latency_ms=latency_ms,
                confidence=decision.confidence,
                action=decision.intent.action.value,
                detail=None if ok else decision.raw[:_RAW_KEPT],
            )
            return attempt, decision if ok else None
        exc = result
        match exc:
            case InvalidDecision():
                outcome, detail = "invalid", f"{exc.reason}; raw={(exc.raw or '')[:_RAW_KEPT]!r}"
            case BackendTimeout() | TimeoutError():
                outcome, detail = "timeout", str(exc) or "deadline"
            case _:
                outcome, detail = "error", f"{type(exc).__name__}: {exc}"
                self._log.warning("tier_error", tier=tier.name, error=detail)
        return TierAttempt(tier=tier.name, outcome=outcome, latency_ms=latency_ms, detail=detail), None

    def _record(self, path: list[TierAttempt], accepted: str | None) -> None:
        s = self._stats
        for a in path:
            s.tiers.setdefault(a.tier, TierStats()).observe(a.outcome, a.latency_ms)
        if accepted is None:
            s.undecided += 1
        else:
            s.decisions += 1
            s.accepted_by[accepted] += 1
        if len({a.tier for a in path}) > 1:
            s.escalated += 1
