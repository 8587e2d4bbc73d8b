"""The student tier: an SGLang server's native ``POST /generate`` with a per-request grammar.

Each decision is one request: the harmony prompt (fixed part first, so SGLang's radix cache holds
it) prefilled to the final channel, ``temperature: 0``, a small ``max_new_tokens``, exactly one of
``json_schema`` (a JSON string) or ``ebnf`` built from the live ledger, and the top-5 log-probs of
every output token. The confidence is the renormalised probability of the chosen action at the
position where the action is written (see :mod:`intent.confidence`), temperature-scaled by the
calibration stored in the config.

Streaming mode reads the cumulative SSE chunks and reports an *early decision* as soon as the action
and the task id are fixed; the explanation may still be arriving. Both times are recorded.

Failures are typed: :class:`BackendTimeout` when the deadline passes, :class:`BackendError` for
transport and server errors, :class:`InvalidDecision` (with the raw text) for an output that does
not parse or names a task that is not open. Transport errors and 5xx are retried, but only while
the deadline leaves room.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from typing import Literal

import aiohttp
import msgspec

from intent.backend import BackendError, BackendTimeout, Decision, DecisionRequest
from intent.calibration import Calibration
from intent.confidence import confidence_of, early_fixed
from intent.constraints import allowed_actions, ebnf, json_schema
from intent.contract import ACTIONS, ChatMessage, validate
from intent.errors import InvalidDecision
from intent.prompt import render_harmony
from intent.sglang_wire import (
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
    SamplingParams,
    encoder,
    error_decoder,
    model_info_decoder,
    response_decoder,
)
from intent.wire import parse_call, parse_json

_NEEDS_TASK = {a.value: a.needs_task for a in ACTIONS}
_JSON_HEADERS = {"Content-Type": "application/json"}


class SGLangConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to talk to one SGLang server (stored with its calibration)."""

    url: str = "http://localhost:30000"
    name: str = "sglang"
    output_format: Literal["json", "call"] = "json"  # json → json_schema, call → ebnf
    max_new_tokens: int = 160
    lora_path: str | None = None
    stream: bool = False
    top_logprobs: int = 5
    transcript_limit: int = 12
    calibration: Calibration = msgspec.field(default_factory=Calibration)
    timeout_s: float = 5.0  # per decision when the request carries no deadline
    connect_timeout_s: float = 1.0
    retry_backoff_s: float = 0.02
    max_attempts: int = 3
    pool_size: int = 256
    warmup: bool = True


class EarlyDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What a stream fixes before it ends: the action, the task id, and when (ms since the request)."""

    action: str
    task_id: str | None
    confidence: float | None
    ms: float


class _Retryable(Exception):
    """A failure worth another attempt if the deadline allows (transport error, 5xx)."""


class SGLangBackend:
    """The ``sglang`` tier. Create once, ``await start()`` (optional), ``decide`` many times, ``aclose``."""

    def __init__(self, config: SGLangConfig) -> None:
        self.config = config
        self.name = config.name
        self._base = config.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.model: ModelInfo | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.pool_size, keepalive_timeout=30.0)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def start(self) -> ModelInfo:
        """Check ``/health``, read ``/model_info`` and send one warm-up decision (fills the prefix cache)."""
        if not await self.health():
            raise BackendError(self.name, f"{self._base}/health is not 200")
        self.model = await self.model_info()
        if self.config.warmup:
            warm = DecisionRequest(
                conversation_id="warm-up",
                turn_id="warm-up",
                transcript=[ChatMessage(role="user", content="hello")],
                tasks=[],
                deadline=time.monotonic() + max(self.config.timeout_s, 10.0),
            )
            await self.decide(warm)
        return self.model

    async def health(self, timeout_s: float = 5.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s), self._http().get(f"{self._base}/health") as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def model_info(self, timeout_s: float = 5.0) -> ModelInfo:
        """``GET /model_info`` (SGLang 0.5.2x), falling back to ``/get_model_info`` (0.5.2)."""
        try:
            async with asyncio.timeout(timeout_s):
                for path in ("/model_info", "/get_model_info"):
                    async with self._http().get(self._base + path) as resp:
                        body = await resp.read()
                        if resp.status == 200:
                            return model_info_decoder.decode(body)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            raise BackendError(self.name, f"model info: {exc!r}") from exc
        raise BackendError(self.name, "neither /model_info nor /get_model_info answered 200")

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- requests --------------------------------------------------------------------------------
    def build_request(self, request: DecisionRequest, stream: bool = False, attempt: int = 0) -> GenerateRequest:
        """The ``/generate`` body for one decision (exactly one grammar, json_schema as a string)."""
        fmt = self.config.output_format
        grammar = _grammar(fmt, tuple(request.open_task_ids))
        sampling = SamplingParams(
            temperature=0.0,
            max_new_tokens=self.config.max_new_tokens,
            json_schema=grammar if fmt == "json" else None,
            ebnf=grammar if fmt == "call" else None,
        )
        return GenerateRequest(
            text=render_harmony(request, fmt, self.config.transcript_limit),
            sampling_params=sampling,
            rid=f"sraq-{request.turn_id}-{attempt}-{uuid.uuid4().hex[:8]}",
            stream=stream,
            return_logprob=True,
            top_logprobs_num=self.config.top_logprobs,
            return_text_in_logprobs=True,
            lora_path=self.config.lora_path,
        )

    async def decide(self, request: DecisionRequest) -> Decision:
        """One decision (streamed when the config says so)."""
        if self.config.stream:
            return await self.decide_streaming(request)
        return await self._with_retries(request, None)

    async def decide_streaming(
        self, request: DecisionRequest, on_early: Callable[[EarlyDecision], None] | None = None
    ) -> Decision:
        """Stream the decision; ``on_early`` is called once when action and task id are fixed."""
        return await self._with_retries(request, on_early, stream=True)

    async def _with_retries(
        self,
        request: DecisionRequest,
        on_early: Callable[[EarlyDecision], None] | None,
        stream: bool = False,
    ) -> Decision:
        t0 = time.perf_counter()
        deadline = request.deadline if request.deadline is not None else time.monotonic() + self.config.timeout_s
        last: Exception | None = None
        for attempt in range(self.config.max_attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            body = encoder.encode(self.build_request(request, stream, attempt))
            try:
                async with asyncio.timeout(left):
                    if stream:
                        resp, transport_ms, early_ms = await self._stream(request, body, t0, on_early)
                    else:
                        resp, transport_ms = await self._post(body)
                        early_ms = None
            except TimeoutError:
                raise BackendTimeout(self.name, f"no answer within the deadline ({left * 1000:.0f} ms)") from None
            except _Retryable as exc:
                last = exc
                if deadline - time.monotonic() > self.config.retry_backoff_s:
                    await asyncio.sleep(self.config.retry_backoff_s * (attempt + 1))
                continue
            return self._decision(request, resp, t0, transport_ms, early_ms)
        if last is None:
            raise BackendTimeout(self.name, "deadline already passed")
        raise BackendError(self.name, f"gave up after retries: {last}")

    async def _post(self, body: bytes) -> tuple[GenerateResponse, float]:
        t = time.perf_counter()
        try:
            async with self._http().post(f"{self._base}/generate", data=body, headers=_JSON_HEADERS) as resp:
                payload = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise _Retryable(f"transport: {exc}") from exc
        transport_ms = (time.perf_counter() - t) * 1000
        self._check_status(status, payload)
        try:
            return response_decoder.decode(payload), transport_ms
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendError(self.name, f"unreadable /generate response: {exc}") from exc

    def _check_status(self, status: int, payload: bytes) -> None:
        if status == 200:
            return
        message = _error_message(payload)
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}: {message}")
        raise BackendError(self.name, f"HTTP {status}: {message}")

    async def _stream(
        self,
        request: DecisionRequest,
        body: bytes,
        t0: float,
        on_early: Callable[[EarlyDecision], None] | None,
    ) -> tuple[GenerateResponse, float, float | None]:
        t = time.perf_counter()
        last: GenerateResponse | None = None
        early_ms: float | None = None
        fmt = self.config.output_format
        try:
            async with self._http().post(f"{self._base}/generate", data=body, headers=_JSON_HEADERS) as resp:
                if resp.status != 200:
                    self._check_status(resp.status, await resp.read())
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    last = self._chunk(payload, last)
                    if early_ms is None and (fixed := early_fixed(last.text, fmt, _NEEDS_TASK)) is not None:
                        early_ms = (time.perf_counter() - t0) * 1000
                        if on_early is not None:
                            on_early(
                                EarlyDecision(
                                    action=fixed[0],
                                    task_id=fixed[1],
                                    confidence=self._confidence(request, last).get(fixed[0]),
                                    ms=early_ms,
                                )
                            )
        except aiohttp.ClientError as exc:
            raise _Retryable(f"transport: {exc}") from exc
        if last is None:
            raise BackendError(self.name, "stream ended without a chunk")
        return last, (time.perf_counter() - t) * 1000, early_ms

    def _chunk(self, payload: bytes, previous: GenerateResponse | None) -> GenerateResponse:
        """Decode one SSE chunk; incremental servers (``--incremental-streaming-output``) are merged."""
        try:
            chunk = response_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            try:
                message = error_decoder.decode(payload).message
            except (msgspec.DecodeError, msgspec.ValidationError):
                message = payload[:200].decode("utf-8", "replace")
            raise BackendError(self.name, f"stream error: {message}") from None
        meta = chunk.meta_info
        if previous is None or len(meta.output_token_logprobs) >= meta.completion_tokens:
            return chunk  # cumulative (SGLang's default)
        pm = previous.meta_info
        merged = msgspec.structs.replace(
            meta,
            output_token_logprobs=pm.output_token_logprobs + meta.output_token_logprobs,
            output_top_logprobs=pm.output_top_logprobs + meta.output_top_logprobs,
        )
        return GenerateResponse(
            text=previous.text + chunk.text, meta_info=merged, output_ids=previous.output_ids + chunk.output_ids
        )

    def _confidence(self, request: DecisionRequest, resp: GenerateResponse) -> dict[str, float]:
        """The calibrated action distribution of an output."""
        return self.config.calibration.apply(self._distribution(request, resp))

    def _distribution(self, request: DecisionRequest, resp: GenerateResponse) -> dict[str, float]:
        meta = resp.meta_info
        return confidence_of(
            resp.text,
            self.config.output_format,
            allowed_actions(request.open_task_ids),
            [c.text or "" for c in meta.output_token_logprobs],
            [c.logprob for c in meta.output_token_logprobs],
            meta.output_top_logprobs,
        )

    def _decision(
        self,
        request: DecisionRequest,
        resp: GenerateResponse,
        t0: float,
        transport_ms: float,
        early_ms: float | None,
    ) -> Decision:
        meta = resp.meta_info
        if meta.finish_reason is not None and meta.finish_reason.type == "abort":
            raise BackendError(self.name, f"aborted by the server: {meta.finish_reason.message}")
        parse = parse_json if self.config.output_format == "json" else parse_call
        try:
            intent = validate(parse(resp.text), request.open_task_ids)
        except InvalidDecision as exc:
            raise InvalidDecision(exc.reason, resp.text) from None
        raw_dist = self._distribution(request, resp)
        if not raw_dist:
            raise BackendError(self.name, "no log-probs at the action position (is return_logprob honoured?)")
        dist = self.config.calibration.apply(raw_dist)
        return Decision(
            intent=intent,
            confidence=dist.get(intent.action.value, 0.0),
            tier=self.name,
            latency_ms=(time.perf_counter() - t0) * 1000,
            raw=resp.text,
            prompt_tokens=meta.prompt_tokens,
            completion_tokens=meta.completion_tokens,
            cached_tokens=meta.cached_tokens,
            confidence_source="calibrated" if self.config.calibration.temperature != 1.0 else "model",
            server_latency_ms=None if meta.e2e_latency is None else meta.e2e_latency * 1000,
            early_ms=early_ms,
            transport_ms=transport_ms,
            action_probs=raw_dist,
        )


@functools.lru_cache(maxsize=4096)
def _grammar(fmt: str, open_task_ids: tuple[str, ...]) -> str:
    """The request grammar; memoised because the same ledgers recur turn after turn."""
    return json_schema(open_task_ids) if fmt == "json" else ebnf(open_task_ids)


def _error_message(payload: bytes) -> str:
    try:
        return error_decoder.decode(payload).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return payload[:200].decode("utf-8", "replace") or "(empty body)"
