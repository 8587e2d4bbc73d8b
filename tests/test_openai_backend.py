"""The OpenAI-compatible tier: strict schema shape, servers without log-probs, retries within the deadline."""

from __future__ import annotations

import time

import pytest

from intent.backend import BackendError, BackendTimeout
from intent.openai_backend import OpenAIBackend, OpenAIConfig, strict_schema
from intent.stub_server import StubConfig, StubServer, running
from tests.intent_helpers import fast, request


def test_strict_schema_has_an_object_root() -> None:
    schema = strict_schema(["task-1"])
    assert schema["type"] == "object" and schema["required"] == ["decision"]
    assert schema["additionalProperties"] is False
    assert "anyOf" in schema["properties"]["decision"]
    assert "maxLength" not in str(schema)  # strict mode rejects length keywords


@pytest.mark.parametrize("mode", ["null", "reject"])
async def test_server_without_logprobs_gives_constant_confidence(mode: str) -> None:
    async with running(fast(chat_logprobs=mode)) as url:
        backend = OpenAIBackend(OpenAIConfig(base_url=f"{url}/v1", model="m"))
        try:
            for _ in range(2):
                d = await backend.decide(request("find me a hotel"))
                assert (d.confidence, d.confidence_source) == (1.0, "constant")
                assert d.action_probs is None
            if mode == "reject":  # asked once with logprobs, then never again
                assert "logprobs" not in backend.build_kwargs(request("x"))
        finally:
            await backend.aclose()


async def test_logprobs_give_a_model_confidence() -> None:
    async with running(fast()) as url:
        backend = OpenAIBackend(OpenAIConfig(base_url=f"{url}/v1", model="m", reasoning_effort="low"))
        try:
            kwargs = backend.build_kwargs(request("x"))
            assert kwargs["reasoning_effort"] == "low" and kwargs["top_logprobs"] == 5
            d = await backend.decide(request("find me a hotel"))
        finally:
            await backend.aclose()
    assert d.confidence_source == "model" and 0.5 < d.confidence < 1.0
    assert d.action_probs is not None and abs(sum(d.action_probs.values()) - 1.0) < 1e-9
    assert d.cached_tokens is not None and d.prompt_tokens is not None


async def test_5xx_is_retried_with_backoff_but_only_within_the_deadline() -> None:
    server = StubServer(StubConfig(error_rate=1.0))
    async with running(server) as url:
        backend = OpenAIBackend(OpenAIConfig(base_url=f"{url}/v1", model="m", backoff_s=0.02, max_attempts=4))
        try:
            t = time.monotonic()
            with pytest.raises(BackendError) as info:
                await backend.decide(request("hello", deadline_s=2.0))
            assert time.monotonic() - t < 2.5
            assert "InternalServerError" in str(info.value)
            assert not isinstance(info.value, BackendTimeout)
            assert server.requests == 4  # max_attempts, with backoff in between
            t = time.monotonic()
            with pytest.raises(BackendError):  # too little time left for a backoff: gives up early
                await backend.decide(request("hello", deadline_s=0.05))
            assert time.monotonic() - t < 1.0
        finally:
            await backend.aclose()
