"""Prometheus metrics of one Orchestrator (its own registry, never the global default) and the
``/metrics`` + ``/health`` HTTP endpoint (aiohttp)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    """Every metric the loop exports. One instance per Orchestrator, so tests and benchmarks that
    run several orchestrators in one process never share (or collide on) counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decision_latency = Histogram(
            "sraq_decision_latency_seconds", "Routing decision latency per tier", ["tier"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "sraq_turn_overhead_seconds", "Orchestration time per turn excluding the decision (read to commit)",
            buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.turns = Counter(
            "sraq_turns_processed", "Turns committed, by action and outcome", ["action", "outcome"], registry=r
        )
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
        self.owned = Gauge("sraq_partitions_owned", "Partitions this instance owns", registry=r)
        self.in_flight = Gauge("sraq_turns_in_flight", "Turns read and not yet committed", registry=r)
        self.redis_errors = Counter("sraq_redis_errors", "Redis connection failures seen by the loop", registry=r)
        # labelled children used on every turn, looked up once (``labels()`` costs more than the update)
        self._turn_counters: dict[tuple[str, str], Counter] = {}
        self._latencies: dict[str, Histogram] = {}

    def turn_done(self, action: str, outcome: str) -> None:
        """Count a committed turn (``sraq_turns_processed{action, outcome}``)."""
        child = self._turn_counters.get((action, outcome))
        if child is None:
            child = self._turn_counters[(action, outcome)] = self.turns.labels(action, outcome)
        child.inc()

    def decided(self, tier: str, seconds: float) -> None:
        """Record one routing decision's latency (``sraq_decision_latency_seconds{tier}``)."""
        child = self._latencies.get(tier)
        if child is None:
            child = self._latencies[tier] = self.decision_latency.labels(tier)
        child.observe(seconds)

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
