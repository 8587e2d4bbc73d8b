"""The cascade: accept, escalate (low confidence, error, timeout, invalid output), undecided, hedging."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from intent.backend import Undecided
from intent.contract import Action
from intent.openai_backend import OpenAIBackend, OpenAIConfig
from intent.router import Router, Tier
from intent.sglang import SGLangBackend, SGLangConfig
from intent.stub_server import Latency, StubConfig, running
from tests.intent_helpers import fast, request


@contextlib.asynccontextmanager
async def cascade(
    student: StubConfig,
    teacher: StubConfig,
    student_deadline: float = 1.0,
    hedge: float | None = None,
    teacher_threshold: float = 0.0,
) -> AsyncIterator[Router]:
    async with running(student) as s_url, running(teacher) as t_url:
        router = Router(
            [
                Tier(SGLangBackend(SGLangConfig(url=s_url)), 0.8, student_deadline, hedge),
                Tier(
                    OpenAIBackend(OpenAIConfig(base_url=f"{t_url}/v1", model="teacher", backoff_s=0.01)),
                    teacher_threshold,
                    2.0,
                ),
            ]
        )
        try:
            yield router
        finally:
            await router.aclose()


async def test_confident_student_is_accepted() -> None:
    async with cascade(fast(), fast()) as router:
        d = await router.decide(request("can you find me a hotel in Lisbon"))
        assert d.tier == "sglang" and d.intent.action is Action.START_TASK
        assert [a.outcome for a in d.path] == ["accepted"]
        assert d.confidence >= 0.8
        assert router.stats()["escalation_rate"] == 0.0


async def test_low_confidence_escalates_to_the_teacher() -> None:
    async with cascade(fast(low_confidence_rate=1.0), fast()) as router:
        d = await router.decide(request("can you find me a hotel in Lisbon"))
        assert d.tier == "openai"
        first, second = d.path
        assert (first.tier, first.outcome) == ("sglang", "low_confidence")
        assert first.confidence is not None and first.confidence < 0.8
        assert (second.tier, second.outcome) == ("openai", "accepted")
        stats = router.stats()
        assert stats["escalated"] == 1 and stats["accepted_by"] == {"openai": 1}
        assert stats["tiers"]["sglang"]["outcomes"] == {"low_confidence": 1}


@pytest.mark.parametrize(
    ("student", "outcome"),
    [
        (fast(error_rate=1.0), "error"),
        (fast(timeout_rate=1.0), "timeout"),
        (fast(malformed_rate=1.0), "invalid"),
    ],
)
async def test_failures_escalate(student: StubConfig, outcome: str) -> None:
    async with cascade(student, fast(), student_deadline=0.3) as router:
        d = await router.decide(request("actually only direct flights to Porto"))
        assert d.tier == "openai" and d.intent.action is Action.UPDATE_TASK
        assert [a.outcome for a in d.path] == [outcome, "accepted"]
        if outcome == "invalid":
            assert "raw=" in (d.path[0].detail or "")  # the rejected output is recorded, never applied


async def test_every_tier_failing_is_undecided() -> None:
    async with cascade(fast(error_rate=1.0), fast(malformed_rate=1.0)) as router:
        with pytest.raises(Undecided) as info:
            await router.decide(request("cancel the dinner please"))
        outcomes = [(a.tier, a.outcome) for a in info.value.path]
        assert outcomes == [("sglang", "error"), ("openai", "invalid")]
        assert router.stats()["undecided"] == 1


async def test_teacher_below_its_threshold_is_undecided() -> None:
    async with cascade(fast(low_confidence_rate=1.0), fast(low_confidence_rate=1.0), teacher_threshold=0.7) as router:
        with pytest.raises(Undecided) as info:
            await router.decide(request("find me a hotel"))
        assert [a.outcome for a in info.value.path] == ["low_confidence", "low_confidence"]


async def test_hedging_starts_the_teacher_and_takes_the_first_acceptable_answer() -> None:
    slow_student = StubConfig(latency=Latency(kind="fixed", a=1500.0))
    async with cascade(slow_student, fast(), student_deadline=3.0, hedge=0.05) as router:
        d = await router.decide(request("find me a hotel"))
        assert d.tier == "openai"
        assert {(a.tier, a.outcome) for a in d.path} == {("openai", "accepted"), ("sglang", "cancelled")}
        assert d.latency_ms < 1500  # did not wait for the student


async def test_overall_deadline_bounds_the_cascade() -> None:
    hung = fast(timeout_rate=1.0)
    async with cascade(hung, hung, student_deadline=5.0) as router:
        with pytest.raises(Undecided) as info:
            await router.decide(request("hello", deadline_s=0.3))
        assert all(a.outcome == "timeout" for a in info.value.path)


async def test_router_counters_export_to_prometheus() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from orchestrator.router_metrics import register_router_metrics

    async with cascade(fast(low_confidence_rate=1.0), fast()) as router:
        registry = CollectorRegistry()
        assert register_router_metrics(registry, router)
        for text in ("find me a hotel", "ok thanks"):
            await router.decide(request(text))
        text = generate_latest(registry).decode()
    assert 'sraq_router_decisions_total{tier="openai"} 2.0' in text
    assert "sraq_router_escalations_total 2.0" in text
    assert 'sraq_router_attempts_total{outcome="low_confidence",tier="sglang"} 2.0' in text
    assert 'sraq_router_tier_latency_seconds_count{tier="sglang"} 2.0' in text
    assert 'sraq_router_tier_latency_seconds_bucket{le="+Inf",tier="openai"} 2.0' in text
