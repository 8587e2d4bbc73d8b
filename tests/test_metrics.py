"""The per-turn metrics kept without prometheus_client's locks export what its own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from orchestrator.metrics import _LATENCY_BUCKETS, _OVERHEAD_BUCKETS, Metrics

#: values on, between, below and above the bucket bounds
VALUES = [0.0, 0.0001, 0.00049, 0.0005, 0.0007, 0.001, 0.0049, 0.005, 0.3, 1.0, 4.9, 7.5, 120.0]


def _samples(text: bytes, prefix: str) -> list[str]:
    return sorted(line for line in text.decode().splitlines() if line.startswith(prefix) and "_created" not in line)


def test_per_turn_metrics_match_prometheus_client_types() -> None:
    ours = Metrics()
    ref = CollectorRegistry()
    latency = Histogram("sraq_decision_latency_seconds", "d", ["tier"], buckets=_LATENCY_BUCKETS, registry=ref)
    overhead = Histogram("sraq_turn_overhead_seconds", "d", buckets=_OVERHEAD_BUCKETS, registry=ref)
    turns = Counter("sraq_turns_processed", "d", ["action", "outcome"], registry=ref)
    for i, v in enumerate(VALUES):
        tier = ("embedded", "sglang")[i % 2]
        ours.decided(tier, v)
        latency.labels(tier).observe(v)
        ours.overhead.observe(v / 100)
        overhead.observe(v / 100)
        action = ("reply", "noop", "start_task")[i % 3]
        ours.turn_done(action, "committed")
        turns.labels(action, "committed").inc()
    ours.turn_done("reply", "duplicate")
    turns.labels("reply", "duplicate").inc()
    mine, theirs = ours.render(), generate_latest(ref)
    for name in ("sraq_decision_latency_seconds", "sraq_turn_overhead_seconds", "sraq_turns_processed"):
        expected = _samples(theirs, name)
        assert expected and _samples(mine, name) == expected, name
