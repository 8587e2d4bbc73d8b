"""Typed response bodies of the stand-in server, shaped like SGLang's (see ``intent.sglang_wire``).

Keys SGLang only sends sometimes (log-prob lists without ``return_logprob``, ``e2e_latency`` before
the final chunk) are ``UNSET`` and so absent from the JSON, as they are from SGLang's.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from intent.confidence import TokenCandidate


class Finish(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    matched: int | UnsetType = UNSET
    length: int | UnsetType = UNSET


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    finish_reason: Finish | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    weight_version: str = "default"
    e2e_latency: float | UnsetType = UNSET
    input_token_logprobs: list[TokenCandidate] | UnsetType = UNSET
    output_token_logprobs: list[TokenCandidate] | UnsetType = UNSET
    input_top_logprobs: list[list[TokenCandidate]] | UnsetType = UNSET
    output_top_logprobs: list[list[TokenCandidate]] | UnsetType = UNSET


class Generated(msgspec.Struct, frozen=True, kw_only=True):
    """One ``/generate`` body (or cumulative/incremental SSE chunk)."""

    text: str
    output_ids: list[int]
    meta_info: Meta


class GateError(msgspec.Struct, frozen=True):
    """SGLang 0.5.23's contract gate: ``{"error": "<serde text>"}``."""

    error: str


class Detail(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    type: str | UnsetType = UNSET
    code: int | UnsetType = UNSET
    retryable: bool | UnsetType = UNSET


class ValueErrorBody(msgspec.Struct, frozen=True):
    """A ValueError past the gate: ``{"error": {"message": ...}}`` (plus type/code/retryable mid-stream)."""

    error: Detail


class OpenAIErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The OpenAI-compatible routes' ``ErrorResponse``."""

    message: str
    type: str
    code: int
    param: None = None
    object: str = "error"


class ModelInfoBody(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /model_info`` of SGLang 0.5.23 (plus a ``stand_in`` note)."""

    model_path: str
    served_model_name: str
    tokenizer_path: str
    is_generation: bool = True
    preferred_sampling_params: None = None
    weight_version: str = "default"
    load_format: str = "stub"
    reasoning_parser: None = None
    tool_call_parser: None = None
    disaggregation_mode: str = "null"
    has_image_understanding: bool = False
    has_audio_understanding: bool = False
    model_type: str = "gpt_oss"
    architectures: list[str] = msgspec.field(default_factory=lambda: ["GptOssForCausalLM"])
    stand_in: str = "sraq stub server: keyword rules or the embedded tier, not a model"


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "sglang"


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[ModelCard]
    object: str = "list"


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    bytes: list[int]
    logprob: float | None


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    bytes: list[int]
    logprob: float | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct, frozen=True, kw_only=True):
    content: list[TokenLogprob]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    role: str = "assistant"
    reasoning_content: str | None = None


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    message: Message
    logprobs: ChoiceLogprobs | None
    index: int = 0
    finish_reason: str = "stop"
    matched_stop: int | None = None


class PromptDetails(msgspec.Struct, frozen=True, kw_only=True):
    cached_tokens: int


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails
    reasoning_tokens: int = 0


class ChatCompletion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"


def top_logprob(c: TokenCandidate) -> TopLogprob:
    text = c.text or ""
    return TopLogprob(token=text, bytes=list(text.encode()), logprob=c.logprob)


def token_logprob(c: TokenCandidate, top: list[TokenCandidate]) -> TokenLogprob:
    text = c.text or ""
    return TokenLogprob(
        token=text, bytes=list(text.encode()), logprob=c.logprob, top_logprobs=[top_logprob(x) for x in top]
    )
