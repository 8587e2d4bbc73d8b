"""The teacher tier: any OpenAI-compatible ``/v1/chat/completions`` server, via the official client.

The request carries the chat rendering of sraq's prompt and ``response_format`` ``json_schema`` with
``strict: true``. OpenAI's strict mode needs an object at the root (our decision schema is an
``anyOf``), so the decision is wrapped: ``{"decision": {...}}``; length keywords that strict mode
does not accept are dropped (lengths are checked after decoding instead).

Confidence comes from ``logprobs``/``top_logprobs`` when the server returns them, exactly as for the
student. A server that ignores them gets ``confidence = 1.0`` with ``confidence_source = "constant"``;
one that rejects them (HTTP 400 naming logprobs, as OpenAI's reasoning models do) is asked again
without them, and not asked for them again.

429 and 5xx are retried with exponential backoff (honouring ``Retry-After``) but only while the
deadline leaves room. The API key comes from the settings/environment and is never logged: it is
not part of :class:`OpenAIConfig` (whose repr may appear in logs).
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import time
from typing import Any

import msgspec
import openai
from openai.types.chat import ChatCompletion

from intent.backend import BackendError, BackendTimeout, Decision, DecisionRequest
from intent.calibration import Calibration
from intent.confidence import TokenCandidate, confidence_of
from intent.constraints import MAX_TEXT_CHARS, allowed_actions, json_schema_dict
from intent.contract import Intent, validate
from intent.errors import InvalidDecision
from intent.prompt import render_chat
from intent.wire import parse_json

WRAPPER = "decision"


class OpenAIConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to call one OpenAI-compatible server (no secrets in here)."""

    base_url: str | None = None  # None: api.openai.com
    model: str = "gpt-oss-120b"
    name: str = "openai"
    reasoning_effort: str | None = "low"  # gpt-oss refuses "none"
    logprobs: bool = True
    top_logprobs: int = 5
    temperature: float | None = None  # reasoning models reject anything but the default
    max_completion_tokens: int = 2048  # reasoning tokens count here too
    transcript_limit: int = 12
    calibration: Calibration = msgspec.field(default_factory=Calibration)
    timeout_s: float = 30.0  # per decision when the request carries no deadline
    max_attempts: int = 4
    backoff_s: float = 0.25


def strict_schema(open_task_ids: list[str]) -> dict[str, Any]:
    """The decision schema in the shape OpenAI strict mode accepts (object root, no length keywords)."""
    inner = copy.deepcopy(json_schema_dict(open_task_ids))
    inner.pop("title", None)
    for branch in inner["anyOf"]:
        for prop in branch["properties"]["args"]["properties"].values():
            prop.pop("minLength", None)
            prop.pop("maxLength", None)
    return {
        "type": "object",
        "properties": {WRAPPER: inner},
        "required": [WRAPPER],
        "additionalProperties": False,
    }


class _Wrapped(msgspec.Struct):
    decision: msgspec.Raw


class OpenAIBackend:
    """The ``openai`` tier over ``openai.AsyncOpenAI`` (its own retries off: the deadline rules)."""

    def __init__(self, config: OpenAIConfig, api_key: str | None = None) -> None:
        self.config = config
        self.name = config.name
        self._key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers ignore the key
        self._client: openai.AsyncOpenAI | None = None  # created on first use, inside the event loop
        self._logprobs = config.logprobs

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.config!r})"  # never the key

    def _api(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self._key, max_retries=0)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def start(self) -> None:
        """Nothing to warm up remotely; kept for symmetry with the SGLang tier."""

    def build_kwargs(self, request: DecisionRequest) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for one decision."""
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": render_chat(request, "json", self.config.transcript_limit),
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "decision", "schema": strict_schema(request.open_task_ids), "strict": True},
            },
            "max_completion_tokens": self.config.max_completion_tokens,
        }
        if self._logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = self.config.top_logprobs
        if self.config.reasoning_effort:
            kwargs["reasoning_effort"] = self.config.reasoning_effort
        if self.config.temperature is not None:
            kwargs["temperature"] = self.config.temperature
        return kwargs

    async def decide(self, request: DecisionRequest) -> Decision:
        t0 = time.perf_counter()
        deadline = request.deadline if request.deadline is not None else time.monotonic() + self.config.timeout_s
        attempt = 0
        last = "no attempt"
        while attempt < self.config.max_attempts:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendTimeout(self.name, f"deadline passed ({last})")
            kwargs = self.build_kwargs(request)
            t = time.perf_counter()
            try:
                async with asyncio.timeout(left):
                    completion = await self._api().chat.completions.create(**kwargs, timeout=left)
            except (TimeoutError, openai.APITimeoutError):
                raise BackendTimeout(self.name, f"no answer within the deadline ({left * 1000:.0f} ms)") from None
            except openai.BadRequestError as exc:
                if self._logprobs and "logprob" in str(exc.message).lower():
                    self._logprobs = False  # the server does not do log-probs: stop asking
                    continue
                raise BackendError(self.name, f"HTTP 400: {exc.message}") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                attempt += 1
                wait = self._backoff(attempt, exc)
                if deadline - time.monotonic() <= wait:
                    raise BackendError(self.name, f"gave up within the deadline: {last}") from None
                await asyncio.sleep(wait)
                continue
            except openai.APIStatusError as exc:
                raise BackendError(self.name, f"HTTP {exc.status_code}: {exc.message}") from None
            return self._decision(request, completion, t0, (time.perf_counter() - t) * 1000)
        raise BackendError(self.name, f"gave up after {attempt} attempts: {last}")

    def _backoff(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass
        return float(self.config.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))

    def _decision(
        self, request: DecisionRequest, completion: ChatCompletion, t0: float, transport_ms: float
    ) -> Decision:
        if not completion.choices:
            raise BackendError(self.name, "response without choices")
        choice = completion.choices[0]
        raw = choice.message.content or ""
        intent = self._parse(raw, request)
        confidence, source, probs = 1.0, "constant", None
        content = choice.logprobs.content if choice.logprobs is not None else None
        if content:
            dist = confidence_of(
                raw,
                "json",
                allowed_actions(request.open_task_ids),
                [t.token for t in content],
                [t.logprob for t in content],
                [[TokenCandidate(c.logprob, 0, c.token) for c in t.top_logprobs] for t in content],
            )
            if dist:
                probs = dist
                scaled = self.config.calibration.apply(dist)
                confidence = scaled.get(intent.action.value, 0.0)
                source = "calibrated" if self.config.calibration.temperature != 1.0 else "model"
        usage = completion.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
        return Decision(
            intent=intent,
            confidence=confidence,
            tier=self.name,
            latency_ms=(time.perf_counter() - t0) * 1000,
            raw=raw,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            cached_tokens=getattr(details, "cached_tokens", None),
            confidence_source=source,
            transport_ms=transport_ms,
            action_probs=probs,
        )

    def _parse(self, raw: str, request: DecisionRequest) -> Intent:
        try:
            inner = msgspec.json.decode(raw, type=_Wrapped).decision
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidDecision(f"bad wrapped decision: {exc}", raw) from None
        try:
            intent = validate(parse_json(bytes(inner)), request.open_task_ids)
        except InvalidDecision as exc:
            raise InvalidDecision(exc.reason, raw) from None
        if any(len(v) > MAX_TEXT_CHARS or not v for v in intent.args().values()):
            raise InvalidDecision("argument empty or longer than allowed", raw)
        return intent
