"""Prometheus view of the cascade router's counters (``Router.stats()``), for an orchestrator's registry.

``register_router_metrics(registry, backend)`` adds a collector when ``backend`` is a cascade; the
numbers are read from the router at scrape time, so the decision path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from intent.backend import Backend
from intent.router import LATENCY_BUCKETS_MS, Router


class RouterCollector(Collector):
    """Escalations, undecided turns, per-tier outcomes and per-tier latency histograms."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        stats = self.router.stats()
        decisions = CounterMetricFamily("sraq_router_decisions", "Decisions accepted by a tier", labels=["tier"])
        for tier, n in stats["accepted_by"].items():
            decisions.add_metric([tier], n)
        yield decisions
        yield CounterMetricFamily(
            "sraq_router_escalations", "Turns that needed more than the first tier", value=stats["escalated"]
        )
        yield CounterMetricFamily("sraq_router_undecided", "Turns no tier accepted", value=stats["undecided"])
        yield GaugeMetricFamily(
            "sraq_router_escalation_rate", "Escalated turns / all turns", value=stats["escalation_rate"]
        )
        attempts = CounterMetricFamily("sraq_router_attempts", "Tier attempts by outcome", labels=["tier", "outcome"])
        latency = HistogramMetricFamily(
            "sraq_router_tier_latency_seconds", "Latency of each tier attempt", labels=["tier"]
        )
        for tier, t in stats["tiers"].items():
            for outcome, n in t["outcomes"].items():
                attempts.add_metric([tier, outcome], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS_MS, None), t["latency_ms_buckets"].values(), strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound is None else str(bound / 1000), cumulative))
            latency.add_metric([tier], buckets, sum_value=t["latency_ms_sum"] / 1000)
        yield attempts
        yield latency


def register_router_metrics(registry: CollectorRegistry, backend: Backend) -> bool:
    """Register the router's collector on ``registry``; False (nothing done) for a single-tier backend."""
    if not isinstance(backend, Router):
        return False
    registry.register(RouterCollector(backend))
    return True
