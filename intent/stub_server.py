"""A stand-in for an SGLang server, for tests, the demo and benchmarks on machines without a GPU.

**It is not a model server.** It speaks SGLang's HTTP API — ``POST /generate`` (streaming and not),
``POST /v1/chat/completions``, ``GET /health``, ``GET /model_info`` and ``GET /get_model_info`` — and
validates requests the way SGLang 0.5.23 does (see :mod:`intent.stub_validate`), but its "decisions"
come from :class:`intent.stub_brain.KeywordBrain`, a handful of deterministic keyword rules (or, with
``brain="embedded"``, from the project's embedded CPU tier). Outputs
always satisfy the grammar the request carried, ``meta_info`` has SGLang's keys (token counts,
``cached_tokens`` from a simulated prefix cache, ``e2e_latency``, log-probs), and the latency and
faults are configurable so the router can be exercised: a fixed or random latency per request, and
rates of HTTP 500s, hung requests (timeouts), malformed outputs and below-threshold confidences.

Run it with ``sraq intent stub-server --port 30000 --latency-ms 150``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web
from msgspec import UNSET

from intent import stub_wire as wire
from intent.confidence import TokenCandidate
from intent.contract import Action
from intent.prompt import parse_rendered
from intent.sglang_wire import RETURN_TOKEN_ID
from intent.stub_brain import (
    Brain,
    Choice,
    EmbeddedBrain,
    Grammar,
    KeywordBrain,
    read_ebnf,
    read_json_schema,
    render_output,
    synth_logprobs,
    token_id,
    tokenize,
)
from intent.stub_config import Latency, StubConfig
from intent.stub_validate import ContractError, RequestError, check_chat, check_generate

__all__ = ["Latency", "StubConfig", "StubServer", "running", "serve"]

Json = dict[str, Any]  # raw request JSON, before validation (responses are typed: intent.stub_wire)
PAGE = 16
CACHE_PAGES = 50_000


class StubServer:
    """The aiohttp application plus its state (request counter, simulated prefix cache, RNG)."""

    def __init__(self, config: StubConfig | None = None, brain: Brain | None = None) -> None:
        self.config = config or StubConfig()
        self.brain: Brain = brain or (EmbeddedBrain() if self.config.brain == "embedded" else KeywordBrain())
        self.rng = random.Random(self.config.seed)
        self.requests = 0
        self.ready = False
        self._pages: OrderedDict[int, None] = OrderedDict()
        self._heads: dict[str, list[str]] = {}
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/health_generate", self.health),
                web.get("/model_info", self.model_info),
                web.get("/get_model_info", self.model_info),
                web.get("/v1/models", self.models),
                web.post("/generate", self.generate),
                web.put("/generate", self.generate),
                web.post("/v1/chat/completions", self.chat),
            ]
        )
        self.app.on_startup.append(self._ready)

    async def _ready(self, _app: web.Application) -> None:
        self.ready = True

    # -- info --------------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def model_info(self, _request: web.Request) -> web.Response:
        path = self.config.model_path
        return _json(wire.ModelInfoBody(model_path=path, served_model_name=path, tokenizer_path=path))

    async def models(self, _request: web.Request) -> web.Response:
        return _json(wire.ModelList(data=[wire.ModelCard(id=self.config.model_path)]))

    # -- shared ------------------------------------------------------------------------------------
    def _cached(self, prompt_tokens: list[str]) -> int:
        """Tokens served from a simulated radix cache: leading 16-token pages seen before (LRU)."""
        cached, chain = 0, 0
        for start in range(0, len(prompt_tokens) - PAGE + 1, PAGE):
            chain = hash((chain, *prompt_tokens[start : start + PAGE]))
            if chain in self._pages:
                self._pages.move_to_end(chain)
                if cached == start:
                    cached += PAGE
            else:
                self._pages[chain] = None
                if len(self._pages) > CACHE_PAGES:
                    self._pages.popitem(last=False)
        return cached

    def _tokenize_prompt(self, prompt: str) -> list[str]:
        """Tokenize a prompt; the fixed head (everything before the ledger) is memoised, as it repeats."""
        head, sep, tail = prompt.partition("## Ledger")
        if not sep:
            return tokenize(prompt)
        head_tokens = self._heads.get(head)
        if head_tokens is None:
            if len(self._heads) >= 8:
                self._heads.clear()
            head_tokens = self._heads[head] = tokenize(head)
        return head_tokens + tokenize(sep + tail)

    def _faults(self) -> tuple[bool, bool, bool, bool]:
        c, r = self.config, self.rng
        rates = (c.error_rate, c.timeout_rate, c.malformed_rate, c.low_confidence_rate)
        error, hang, malformed, low = (r.random() < rate for rate in rates)
        return error, hang, malformed, low

    def _decide(self, prompt: str, grammar: Grammar, low: bool, malformed: bool) -> tuple[Choice, str]:
        tasks, transcript = parse_rendered(prompt)
        choice = self.brain.choose(tasks, transcript, grammar, low)
        out = render_output(choice, grammar)
        if malformed:
            out = _malform(out, choice, grammar, self.rng)
        return choice, out

    # -- /generate ---------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        self.requests += 1
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _openai_error(f"JSON decode error: {exc}", 400, "Bad Request")
        try:
            params = check_generate(body)
        except ContractError as exc:
            return _json(wire.GateError(str(exc)), 400)
        except RequestError as exc:
            if body.get("stream") is True:
                return await _stream_error(request, str(exc))
            return _json(wire.ValueErrorBody(wire.Detail(message=str(exc))), 400)
        error, hang, malformed, low = self._faults()
        latency = self.config.latency.sample(self.rng)
        if error:
            await asyncio.sleep(latency * 0.2)
            return web.Response(status=500, text="Internal Server Error")
        if hang:
            await asyncio.sleep(self.config.hang_s)
        prompt = body.get("text") or ""
        grammar = _grammar_of(params, prompt)
        choice, out = self._decide(prompt, grammar, low, malformed)
        prompt_tokens = self._tokenize_prompt(prompt)
        top_n = int(body.get("top_logprobs_num") or 0)
        tokens, chosen, tops = synth_logprobs(out, choice, grammar, max(top_n, 1))
        max_new = int(params.get("max_new_tokens", 128))
        finish = wire.Finish(type="stop", matched=RETURN_TOKEN_ID)
        if len(tokens) > max_new:
            tokens, chosen, tops = tokens[:max_new], chosen[:max_new], tops[:max_new]
            finish = wire.Finish(type="length", length=max_new)
        cached = self._cached(prompt_tokens)
        gen = _Gen(
            rid=str(body.get("rid") or uuid.uuid4().hex),
            tokens=tokens,
            chosen=chosen,
            tops=tops if top_n > 0 else None,
            logprobs=bool(body.get("return_logprob")),
            with_text=bool(body.get("return_text_in_logprobs")),
            prompt_tokens=len(prompt_tokens),
            cached=cached,
            finish=finish,
            t0=t0,
        )
        if body.get("stream") is True:
            return await self._stream(request, gen, latency, int(params.get("stream_interval") or 1))
        await asyncio.sleep(max(0.0, latency - (time.perf_counter() - t0)))
        return _json(gen.chunk(len(tokens), final=True))

    async def _stream(self, request: web.Request, gen: _Gen, latency: float, interval: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = len(gen.tokens)
        per_token = latency * 0.7 / max(n, 1)  # the first 30% is prefill (time to first token)
        sent = 0
        while sent < n:
            end = min(sent + interval, n)
            due = gen.t0 + latency * 0.3 + per_token * end  # absolute schedule: sleeps do not drift
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            chunk = gen.chunk(end, final=end == n, start=sent if self.config.incremental_streaming else 0)
            await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
            sent = end
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- /v1/chat/completions ----------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        self.requests += 1
        if request.content_type != "application/json":
            return _openai_error("Unsupported Media Type: Only 'application/json' is allowed", 400, "Bad Request")
        try:
            body = msgspec.json.decode(await request.read())
            check_chat(body)
        except (ValueError, msgspec.DecodeError) as exc:
            return _openai_error(str(exc), 400, "BadRequestError")
        want_logprobs = body.get("logprobs") is True
        if want_logprobs and self.config.chat_logprobs == "reject":
            return _openai_error("logprobs is not supported by this model", 400, "BadRequestError")
        error, hang, malformed, low = self._faults()
        latency = self.config.latency.sample(self.rng)
        if error:
            await asyncio.sleep(latency * 0.2)
            return _openai_error("Internal server error: injected fault", 500, "InternalServerError")
        if hang:
            await asyncio.sleep(self.config.hang_s)
        prompt = "\n".join(str(m.get("content") or "") for m in body["messages"])
        rf = body.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
        grammar = read_json_schema(schema) if isinstance(schema, dict) else read_json_schema({})
        choice, out = self._decide(prompt, grammar, low, malformed)
        tokens, chosen, tops = synth_logprobs(out, choice, grammar, max(int(body.get("top_logprobs") or 0), 1))
        prompt_tokens = self._tokenize_prompt(prompt)
        cached = self._cached(prompt_tokens)
        logprobs = None
        if want_logprobs and self.config.chat_logprobs == "yes":
            k = int(body.get("top_logprobs") or 0)
            content = [wire.token_logprob(c, top[:k]) for c, top in zip(chosen, tops, strict=True)]
            logprobs = wire.ChoiceLogprobs(content=content)
        await asyncio.sleep(max(0.0, latency - (time.perf_counter() - t0)))
        usage = wire.Usage(
            prompt_tokens=len(prompt_tokens),
            completion_tokens=len(tokens),
            total_tokens=len(prompt_tokens) + len(tokens),
            prompt_tokens_details=wire.PromptDetails(cached_tokens=cached),
        )
        return _json(
            wire.ChatCompletion(
                id=uuid.uuid4().hex,
                created=int(time.time()),
                model=str(body.get("model") or "default"),
                choices=[
                    wire.Choice(message=wire.Message(content=out), logprobs=logprobs, matched_stop=RETURN_TOKEN_ID)
                ],
                usage=usage,
            )
        )


class _Gen(msgspec.Struct, kw_only=True):
    """One generation, rendered as cumulative ``/generate`` chunks."""

    rid: str
    tokens: list[str]
    chosen: list[TokenCandidate]
    tops: list[list[TokenCandidate]] | None
    logprobs: bool
    with_text: bool
    prompt_tokens: int
    cached: int
    finish: wire.Finish
    t0: float

    def chunk(self, end: int, final: bool, start: int = 0) -> wire.Generated:
        """Tokens ``[start:end)`` (start > 0: an incremental chunk), counts always cumulative."""
        meta = wire.Meta(
            id=self.rid,
            finish_reason=self.finish if final else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=end,
            cached_tokens=self.cached,
            e2e_latency=time.perf_counter() - self.t0 if final else UNSET,
            input_token_logprobs=[] if self.logprobs else UNSET,
            output_token_logprobs=[self._triple(c) for c in self.chosen[start:end]] if self.logprobs else UNSET,
            input_top_logprobs=[] if self.logprobs and self.tops is not None else UNSET,
            output_top_logprobs=(
                [[self._triple(c) for c in top] for top in self.tops[start:end]]
                if self.logprobs and self.tops is not None
                else UNSET
            ),
        )
        tokens = self.tokens[start:end]
        return wire.Generated(text="".join(tokens), output_ids=[token_id(t) for t in tokens], meta_info=meta)

    def _triple(self, c: TokenCandidate) -> TokenCandidate:
        return c if self.with_text else TokenCandidate(c.logprob, c.token_id, None)


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


def _grammar_of(params: Json, prompt: str) -> Grammar:
    if "json_schema" in params:
        return read_json_schema(json.loads(params["json_schema"]))
    if "ebnf" in params:
        return read_ebnf(params["ebnf"])
    return Grammar(
        fmt="call" if "Output format: a single call" in prompt else "json", actions=tuple(Action), task_ids=()
    )


def _malform(out: str, choice: Choice, grammar: Grammar, rng: random.Random) -> str:
    """An output a broken model (or a server ignoring the grammar) could produce."""
    if choice.action.needs_task and rng.random() < 0.5:
        return out.replace(str(choice.args["task_id"]), "task-999999")
    return out[: max(1, len(out) // 2)]


def _openai_error(message: str, code: int, kind: str) -> web.Response:
    return _json(wire.OpenAIErrorBody(message=message, type=kind, code=code), code)


async def _stream_error(request: web.Request, message: str) -> web.StreamResponse:
    """A ValueError raised after the 200 header: one error event, then ``[DONE]`` (SGLang 0.5.23)."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    err = wire.ValueErrorBody(wire.Detail(message=message, type="invalid_request_error", code=400, retryable=False))
    await resp.write(b"data: " + msgspec.json.encode(err) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@contextlib.asynccontextmanager
async def running(
    config: StubConfig | StubServer | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 0.25,
) -> AsyncIterator[str]:
    """Serve a stand-in server in the current event loop; yields its base URL (port 0: a free port).

    Pass a :class:`StubServer` to inspect it afterwards (``requests``). On exit, requests still hanging
    (injected timeouts) are cancelled after ``shutdown_timeout``.
    """
    server = config if isinstance(config, StubServer) else StubServer(config)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


async def serve(host: str, port: int, config: StubConfig, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
    async with running(config, host, port):
        await stop.wait()
