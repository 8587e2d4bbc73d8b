"""The stand-in server: it rejects what SGLang 0.5.23 rejects, honours grammars, streams like SGLang."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intent.backend import BackendError, DecisionRequest
from intent.constraints import ebnf, json_schema
from intent.contract import ChatMessage, TaskInfo, validate
from intent.sglang import EarlyDecision, SGLangBackend, SGLangConfig
from intent.sglang_wire import response_decoder
from intent.stub_server import Latency, StubConfig, StubServer, running
from intent.wire import parse_call, parse_json
from tests.intent_helpers import fast, request


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/generate", json=body) as resp:
        return resp.status, await resp.json(content_type=None)


GOOD = {"text": "<|start|>user<|message|>hi<|end|>", "sampling_params": {"temperature": 0, "max_new_tokens": 32}}


@pytest.mark.parametrize(
    ("sampling", "status", "error"),
    [
        ({"json_schema": {"type": "object"}}, 400, "invalid type: map, expected a string"),
        ({"foo": 1}, 400, "unknown field `foo`, expected one of `max_new_tokens`, `stop`"),
        ({"temperature": "0"}, 400, 'invalid type: string "0", expected f64'),
        ({"max_new_tokens": 1.5}, 400, "invalid type: floating point `1.5`, expected i64"),
        ({"json_schema": "{}", "ebnf": 'root ::= "a"'}, 400, "Only one of json_schema, regex, ebnf, or structural_tag"),
        ({"temperature": -1}, 400, "temperature must be a non-negative finite number, got -1.0."),
        ({"top_p": 0}, 400, "top_p must be in (0, 1], got 0.0."),
        ({"json_schema": "{not json"}, 400, "Failed to compile json grammar"),
    ],
)
async def test_rejects_what_sglang_rejects(sampling: dict[str, Any], status: int, error: str) -> None:
    async with running(fast()) as url:
        got_status, body = await post(url, {**GOOD, "sampling_params": sampling})
    assert got_status == status
    message = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert message.startswith(error)


async def test_contract_errors_are_plain_strings_and_value_errors_are_objects() -> None:
    async with running(fast()) as url:
        _, gate = await post(url, {**GOOD, "sampling_params": {"foo": 1}})
        _, verify = await post(url, {**GOOD, "sampling_params": {"top_p": 2.0}})
        _, missing = await post(url, {"sampling_params": {}})
        status, _ = await post(url, {**GOOD, "unknown_top_level": True})  # ignored, like SGLang
    assert isinstance(gate["error"], str)
    assert verify == {"error": {"message": "top_p must be in (0, 1], got 2.0."}}
    assert missing == {"error": {"message": "Either text, input_ids or input_embeds should be provided."}}
    assert status == 200


async def test_stream_error_after_the_200_header() -> None:
    body = {**GOOD, "stream": True, "sampling_params": {"json_schema": "{}", "ebnf": 'root ::= "a"'}}
    async with running(fast()) as url, aiohttp.ClientSession() as http, http.post(f"{url}/generate", json=body) as r:
        assert r.status == 200
        lines = [ln for ln in (await r.text()).splitlines() if ln]
    assert json.loads(lines[0][len("data: ") :])["error"]["code"] == 400
    assert lines[-1] == "data: [DONE]"


async def test_health_and_model_info() -> None:
    async with running(fast()) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/health") as r:
            assert r.status == 200 and await r.read() == b""
        for path in ("/model_info", "/get_model_info"):
            async with http.get(url + path) as r:
                info = await r.json()
                assert info["is_generation"] is True and "stand_in" in info


async def test_meta_info_is_sglang_shaped() -> None:
    async with running(fast()) as url:
        status, body = await post(
            url,
            {
                **GOOD,
                "sampling_params": {"temperature": 0, "json_schema": json_schema(["task-1"])},
                "return_logprob": True,
                "top_logprobs_num": 5,
                "return_text_in_logprobs": True,
                "rid": "r-1",
            },
        )
    assert status == 200
    resp = response_decoder.decode(json.dumps(body))
    meta = resp.meta_info
    assert meta.id == "r-1" and meta.finish_reason is not None and meta.finish_reason.matched == 200002
    assert meta.completion_tokens == len(meta.output_token_logprobs) == len(meta.output_top_logprobs) > 0
    assert all(top is not None and len(top) == 5 for top in meta.output_top_logprobs)
    assert "".join(c.text or "" for c in meta.output_token_logprobs) == resp.text
    assert meta.e2e_latency is not None and meta.e2e_latency > 0


async def test_prefix_cache_is_reported() -> None:
    async with running(fast()) as url:
        backend = SGLangBackend(SGLangConfig(url=url, warmup=True))
        try:
            await backend.start()  # the warm-up request fills the simulated radix cache
            d = await backend.decide(request("find me a hotel"))
        finally:
            await backend.aclose()
    assert d.prompt_tokens is not None and d.cached_tokens is not None
    assert d.cached_tokens >= d.prompt_tokens // 2  # the fixed instructions are the long part


async def test_truncation_at_max_new_tokens_is_invalid_output() -> None:
    async with running(fast()) as url:
        backend = SGLangBackend(SGLangConfig(url=url, max_new_tokens=8))
        try:
            with pytest.raises(Exception) as info:
                await backend.decide(request("find me a hotel in Lisbon for three nights"))
        finally:
            await backend.aclose()
    assert type(info.value).__name__ == "InvalidDecision"


task_ids = st.lists(st.from_regex(r"task-[0-9]{1,4}", fullmatch=True), max_size=4, unique=True)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=80)


keywords = st.sampled_from(["", " cancel it", " actually change it", " please find", " ok thanks", " stop"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=task_ids, text=texts, fmt=st.sampled_from(["json", "call"]), words=keywords)
async def test_grammar_is_honoured_end_to_end(ids: list[str], text: str, fmt: str, words: str) -> None:
    tasks = [TaskInfo(id=i, summary=f"summary of {i}") for i in ids]
    req = DecisionRequest(
        conversation_id="c",
        turn_id="t",
        transcript=[ChatMessage(role="user", content=text + words)],
        tasks=tasks,
        deadline=time.monotonic() + 5,
    )
    grammar = {"json_schema": json_schema(ids)} if fmt == "json" else {"ebnf": ebnf(ids)}
    async with running(StubConfig(latency=Latency(a=0.0))) as url:
        sglang = SGLangBackend(SGLangConfig(url=url))
        try:
            body = msgspec.to_builtins(sglang.build_request(req))
            body["sampling_params"] = {"temperature": 0, "max_new_tokens": 400, **grammar}
            status, out = await post(url, body)
        finally:
            await sglang.aclose()
    assert status == 200
    intent = (parse_json if fmt == "json" else parse_call)(out["text"])
    assert validate(intent, ids) == intent  # parses, and names an open task when it names one


@pytest.mark.parametrize("incremental", [False, True])
async def test_streaming_reports_an_early_decision(incremental: bool) -> None:
    slow = StubConfig(latency=Latency(kind="fixed", a=400.0), incremental_streaming=incremental)
    seen: list[EarlyDecision] = []
    long_text = "actually only direct flights to Porto, " + "and a window seat if there is any left " * 4
    async with running(slow) as url:
        backend = SGLangBackend(SGLangConfig(url=url, stream=True))
        try:
            d = await backend.decide_streaming(request(long_text), on_early=seen.append)
        finally:
            await backend.aclose()
    assert len(seen) == 1
    early = seen[0]
    assert (early.action, early.task_id) == ("update_task", d.intent.args()["task_id"])
    assert early.confidence is not None and abs(early.confidence - d.confidence) < 1e-9
    assert d.early_ms is not None and d.early_ms < 0.8 * d.latency_ms  # long explanation still streaming


async def test_chat_completions_validation() -> None:
    async with running(fast()) as url, aiohttp.ClientSession() as http:
        cases = [
            ({"messages": []}, "Messages cannot be empty."),
            ({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "none"}, "Harmony does not"),
            ({"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}, "logprobs"),
        ]
        for body, message in cases:
            async with http.post(f"{url}/v1/chat/completions", json=body) as r:
                err = await r.json()
                assert r.status == 400 and err["object"] == "error" and message in err["message"]
        async with http.post(f"{url}/v1/chat/completions", data="{}", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 400


async def test_embedded_brain_honours_the_grammar() -> None:
    async with running(StubConfig(latency=Latency(a=0.0), brain="embedded")) as url:
        backend = SGLangBackend(SGLangConfig(url=url))
        try:
            for text in ("cancel the dinner please", "find me a hotel in Lisbon", "thanks", "how's it going"):
                d = await backend.decide(request(text))
                assert validate(d.intent, ["task-1", "task-2"]) == d.intent
                assert 0.0 < d.confidence <= 1.0
        finally:
            await backend.aclose()


async def test_sglang_retries_5xx_only_within_the_deadline() -> None:
    server = StubServer(fast(error_rate=1.0))
    async with running(server) as url:
        backend = SGLangBackend(SGLangConfig(url=url, max_attempts=3))
        try:
            with pytest.raises(BackendError) as info:
                await backend.decide(request("hello", deadline_s=2.0))
            assert "HTTP 500" in str(info.value) and server.requests == 3
        finally:
            await backend.aclose()
