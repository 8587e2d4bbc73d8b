"""Prometheus metrics of one Orchestrator (its own registry, never the global default) and the
``/metrics`` + ``/health`` HTTP endpoint (aiohttp).

The three metrics updated on every turn (decision latency, overhead, turns processed) are plain
counts kept by :class:`TurnCollector` and turned into Prometheus families at scrape time:
prometheus_client's own ``Histogram``/``Counter`` take a lock per update (a bucket and the sum: three
locked increments per histogram observation), ~10% of the loop's CPU per turn without a model. Only
the event-loop thread updates them and the endpoint runs on the same loop, so no lock is needed.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class LoopHistogram:
    """Bucket counts (``le`` bounds, then +Inf) and a sum, updated without a lock from the event loop."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value: value <= le
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (``le``, observations at or below it), +Inf last."""
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class TurnCollector(Collector):
    """The per-turn metrics, exported at scrape time (see the module doc)."""

    def __init__(self) -> None:
        self.latency: dict[str, LoopHistogram] = {}
        self.overhead = LoopHistogram(_OVERHEAD_BUCKETS)
        self.turns: Tally[tuple[str, str]] = Tally()

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        latency = HistogramMetricFamily(
            "sraq_decision_latency_seconds", "Routing decision latency per tier", labels=["tier"]
        )
        for tier, hist in sorted(self.latency.items()):
            latency.add_metric([tier], hist.cumulative(), sum_value=hist.total)
        yield latency
        overhead = HistogramMetricFamily(
            "sraq_turn_overhead_seconds", "Orchestration time per turn excluding the decision (read to commit)"
        )
        overhead.add_metric([], self.overhead.cumulative(), sum_value=self.overhead.total)
        yield overhead
        turns = CounterMetricFamily(
            "sraq_turns_processed", "Turns committed, by action and outcome", labels=["action", "outcome"]
        )
        for (action, outcome), n in sorted(self.turns.items()):
            turns.add_metric([action, outcome], n)
        yield turns


class Metrics:
    """Every metric the loop exports. One instance per Orchestrator, so tests and benchmarks that
    run several orchestrators in one process never share (or collide on) counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.per_turn = TurnCollector()
        r.register(self.per_turn)
        #: ``sraq_turn_overhead_seconds``: read to commit, minus the decision
        self.overhead = self.per_turn.overhead
        self.conflicts = Counter("sraq_version_conflicts", "Ledger version conflicts (re-read, re-decide)", registry=r)
        self.dead_letters = Counter(
            "sraq_dead_letters", "Entries moved to a dead-letter stream", ["reason"], registry=r
        )
        self.decision_failures = Counter(
            "sraq_decision_failures", "Turns committed as an undecided noop", ["kind"], registry=r
        )
        self.lease_losses = Counter("sraq_lease_losses", "Partitions lost to fencing or expiry", registry=r)
        self.stream_lag = Gauge(
            "sraq_stream_lag", "Entries of an owned partition not yet delivered to the group", ["partition"], registry=r
        )
        self.pending = Gauge(
            "sraq_stream_pending", "Entries delivered but not yet acknowledged", ["partition"], registry=r
        )
        self.turns_trimmed = Counter(
            "sraq_turns_trimmed", "Processed entries trimmed from the owned turn streams", registry=r
        )
        self.owned = Gauge("sraq_partitions_owned", "Partitions this instance owns", registry=r)
        self.in_flight = Gauge("sraq_turns_in_flight", "Turns read and not yet committed", registry=r)
        self.redis_errors = Counter("sraq_redis_errors", "Redis connection failures seen by the loop", registry=r)

    def turn_done(self, action: str, outcome: str) -> None:
        """Count a committed turn (``sraq_turns_processed{action, outcome}``)."""
        self.per_turn.turns[(action, outcome)] += 1

    def decided(self, tier: str, seconds: float) -> None:
        """Record one routing decision's latency (``sraq_decision_latency_seconds{tier}``)."""
        hist = self.per_turn.latency.get(tier)
        if hist is None:
            hist = self.per_turn.latency[tier] = LoopHistogram(_LATENCY_BUCKETS)
        hist.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /health`` (JSON; 200 healthy, 503 otherwise)."""

    def __init__(self, metrics: Metrics, health: Callable[[], tuple[bool, dict[str, object]]], host: str, port: int):
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        if self._runner is not None:
            return self.port
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, _request: web.Request) -> web.Response:
        ok, body = self.health()
        return web.json_response(body, status=200 if ok else 503)
