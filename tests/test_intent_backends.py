"""One contract suite over every decision backend.

The HTTP tiers (and cascades of them) run against the SGLang-compatible stand-in server, whose
keyword brain is deterministic, so their actions are checked exactly; the embedded tier (a trained
CPU model, no server) runs the shared contract: valid action, open task ids only, confidence in
[0, 1], typed failures, idempotent ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from intent.backend import Backend, BackendError, BackendTimeout, Undecided
from intent.constraints import allowed_actions
from intent.contract import Action
from intent.embedded import EmbeddedBackend
from intent.errors import InvalidDecision
from intent.openai_backend import OpenAIBackend, OpenAIConfig
from intent.router import Router, Tier
from intent.sglang import SGLangBackend, SGLangConfig
from intent.stub_server import StubConfig, running
from tests.intent_helpers import OPEN_TASKS, fast, request

Factory = Callable[[str], Backend]

BACKENDS: dict[str, Factory] = {
    "sglang-json": lambda url: SGLangBackend(SGLangConfig(url=url)),
    "sglang-call": lambda url: SGLangBackend(SGLangConfig(url=url, output_format="call")),
    "sglang-stream": lambda url: SGLangBackend(SGLangConfig(url=url, stream=True)),
    "openai": lambda url: OpenAIBackend(OpenAIConfig(base_url=f"{url}/v1", model="stub", max_attempts=2)),
    "cascade": lambda url: Router(
        [
            Tier(SGLangBackend(SGLangConfig(url=url)), threshold=0.5, deadline_s=2.0),
            Tier(OpenAIBackend(OpenAIConfig(base_url=f"{url}/v1", model="stub")), threshold=0.0, deadline_s=2.0),
        ]
    ),
    "embedded": lambda url: EmbeddedBackend.load(),
    "embedded-cascade": lambda url: Router(
        [
            Tier(EmbeddedBackend.load(), threshold=1.01, deadline_s=0.5),  # never confident enough: escalates
            Tier(SGLangBackend(SGLangConfig(url=url)), threshold=0.0, deadline_s=2.0),
        ]
    ),
}
#: Backends that talk to the stand-in server (its faults and keyword brain apply to them).
REMOTE = {"sglang-json", "sglang-call", "sglang-stream", "openai", "cascade", "embedded-cascade"}
#: What each backend raises when it cannot decide (a cascade wraps every failure in Undecided).
FAILURES = (BackendError, InvalidDecision, Undecided)


@pytest.fixture(params=sorted(BACKENDS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return BACKENDS[request.param]


@pytest.fixture(params=sorted(REMOTE))
def remote(request: pytest.FixtureRequest) -> Factory:
    return BACKENDS[request.param]


def _is_remote(factory: Factory) -> bool:
    return any(BACKENDS[name] is factory for name in REMOTE)


@contextlib.asynccontextmanager
async def backend_on(factory: Factory, config: StubConfig) -> AsyncIterator[Backend]:
    async with running(config) as url:
        backend = factory(url)
        try:
            yield backend
        finally:
            await backend.aclose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("please stop the dinner booking, we're eating at home", Action.CANCEL_TASK),
        ("actually only direct flights to Porto", Action.UPDATE_TASK),
        ("can you find me a hotel in Lisbon", Action.START_TASK),
        ("ok thanks", Action.NOOP),
        ("how is it going?", Action.REPLY),
    ],
)
async def test_decides_within_the_contract(factory: Factory, text: str, expected: Action) -> None:
    async with backend_on(factory, fast()) as backend:
        d = await backend.decide(request(text))
    assert 0.0 <= d.confidence <= 1.0
    assert d.latency_ms > 0 and d.raw
    assert d.tier in ("sglang", "openai", "embedded")
    if d.intent.action.needs_task:
        assert d.intent.args()["task_id"] in ("task-1", "task-2")  # open tasks only, never task-3
    if _is_remote(factory):  # the stand-in's keyword brain is deterministic
        assert d.intent.action is expected
        if expected is Action.CANCEL_TASK:
            assert d.intent.args()["task_id"] == "task-2"  # the one the user talks about


async def test_no_open_task_means_no_update_or_cancel(factory: Factory) -> None:
    """Every backend, remote or not: with no open task, update/cancel never come out."""
    closed = [t for t in OPEN_TASKS if t.status == "completed"]
    async with backend_on(factory, fast()) as backend:
        for text in ("cancel it", "actually make it direct flights", "stop that please"):
            d = await backend.decide(request(text, tasks=closed))
            assert d.intent.action in allowed_actions([])


async def test_deadline_in_the_past_fails_fast(remote: Factory) -> None:
    async with backend_on(remote, fast()) as backend:
        with pytest.raises(FAILURES):
            await backend.decide(request("hello", deadline_s=-0.01))


async def test_hung_server_times_out_at_the_deadline(remote: Factory) -> None:
    async with backend_on(remote, fast(timeout_rate=1.0)) as backend:
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(FAILURES) as info:
            await backend.decide(request("hello", deadline_s=0.3))
        assert loop.time() - t < 3.0  # the deadline (plus slack for a loaded machine), not the 1 h hang
        if not isinstance(info.value, Undecided):
            assert isinstance(info.value, BackendTimeout)


async def test_malformed_output_is_never_returned(remote: Factory) -> None:
    async with backend_on(remote, fast(malformed_rate=1.0)) as backend:
        for text in ("actually only direct flights", "find me a hotel", "cancel the dinner"):
            with pytest.raises(FAILURES) as info:
                await backend.decide(request(text))
            exc = info.value
            if isinstance(exc, InvalidDecision):
                assert exc.raw  # the raw output is kept for the audit
            elif isinstance(exc, Undecided):
                assert any(a.outcome == "invalid" and "raw=" in (a.detail or "") for a in exc.path)


async def test_unreachable_server_is_a_backend_error(remote: Factory) -> None:
    backend = remote("http://127.0.0.1:9")  # discard port: connection refused
    try:
        with pytest.raises(FAILURES):
            await backend.decide(request("hello", deadline_s=1.0))
    finally:
        await backend.aclose()
        await backend.aclose()  # idempotent


async def test_aclose_is_idempotent(factory: Factory) -> None:
    async with running(fast()) as url:
        backend = factory(url)
        await backend.decide(request("hello"))
        await backend.aclose()
        await backend.aclose()
