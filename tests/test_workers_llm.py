"""The ``llm`` handler against the project's SGLang/OpenAI-compatible stand-in server (no model runs).

The stand-in answers ``/v1/chat/completions`` with its keyword rules, so these tests check the wiring
(request, progress, follow-up round on an update, result, failure reporting), not answer quality.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from intent.stub_server import Latency, StubConfig, running
from ledger import Keys, Ledger, StartOp, UpdateOp
from tests.workers_support import Procs, kinds, task_events, wait_until, wait_workers
from workers.dispatcher import Dispatcher
from workers.queue import create_pool


@pytest.fixture
async def stub_url() -> AsyncIterator[str]:
    async with running(StubConfig(latency=Latency(a=700.0))) as url:
        yield url


@pytest.fixture
def procs(redis_url: str, keys: Keys) -> Iterator[Procs]:
    p = Procs(redis_url, keys, SRAQ_WORKER_POLL_DELAY_S="0.01", SRAQ_TASK_RETRY_BACKOFF_S="0.05")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def relay(redis_url: str, keys: Keys) -> AsyncIterator[Dispatcher]:
    pool: ArqRedis = create_pool(redis_url, keys)
    d = Dispatcher(pool, keys, consumer="test-relay", block_ms=200)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
        await pool.aclose()


async def test_llm_handler_asks_the_endpoint_and_folds_in_updates(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher, stub_url: str
) -> None:
    procs.worker("--handler", "llm", SRAQ_TASK_LLM_BASE_URL=f"{stub_url}/v1", SRAQ_TASK_LLM_MODEL="stub")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("summarise the meeting notes")])

    async def asked() -> bool:
        return any("round 1" in e.content for e in await task_events(redis, keys, "c1"))

    await wait_until(asked, within=10)
    await ledger.apply("c1", 1, "u2", [UpdateOp("task-1", "keep it to one line")])  # while the model answers

    async def finished() -> bool:
        return any(e.event is not None and e.event.value == "completed" for e in await task_events(redis, keys, "c1"))

    await wait_until(finished, within=10)
    events = await task_events(redis, keys, "c1")
    assert [e.content for e in events if e.event is not None and e.event.value == "progress"] == [
        "asking stub (round 1)",
        "asking stub (round 2)",
    ]
    assert events[-1].content.strip()  # the stand-in's answer is the result


async def test_llm_handler_unconfigured_fails_without_retrying(
    redis: Redis, ledger: Ledger, keys: Keys, procs: Procs, relay: Dispatcher
) -> None:
    procs.worker("--handler", "llm", SRAQ_TASK_LLM_BASE_URL="", SRAQ_OPENAI_BASE_URL="", SRAQ_TASK_MAX_TRIES="3")
    await wait_workers(redis, 1)
    await ledger.apply("c1", 0, "u1", [StartOp("anything")])

    async def failed() -> bool:
        return ("failed", 1) in kinds(await task_events(redis, keys, "c1"))

    await wait_until(failed, within=10)
    events = await task_events(redis, keys, "c1")
    assert kinds(events) == [("started", 1), ("failed", 1)]
    assert "SRAQ_TASK_LLM_BASE_URL" in events[-1].content
