"""Typed wire messages of SGLang's native ``/generate`` route (the subset sraq sends and reads).

Field names and shapes follow SGLang 0.5.2 and 0.5.23 (``GenerateReqInput``, ``SamplingParams``,
the ``meta_info`` built by the tokenizer manager). Requests omit unset fields, because SGLang 0.5.2
turns an unknown or ``null`` sampling key into an HTTP 500 and 0.5.23 rejects unknown ones with 400.
"""

from __future__ import annotations

import msgspec

from intent.confidence import TokenCandidate

#: gpt-oss's ``<|return|>`` stop token (what ``finish_reason.matched`` names on a normal stop).
RETURN_TOKEN_ID = 200002


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The sampling keys sraq uses. ``json_schema`` is a JSON *string* (SGLang rejects an object)."""

    temperature: float = 0.0
    max_new_tokens: int = 128
    json_schema: str | None = None
    ebnf: str | None = None
    stop: list[str] | None = None
    stream_interval: int | None = None


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Body of ``POST /generate``."""

    text: str
    sampling_params: SamplingParams
    rid: str | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    lora_path: str | None = None


class FinishReason(msgspec.Struct, frozen=True, kw_only=True):
    """``{"type": "stop"|"length"|"abort", ...}``; ``matched`` is a token id or a stop string."""

    type: str
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None
    status_code: int | None = None


class MetaInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``meta_info`` of a ``/generate`` response (unknown keys are ignored when decoding)."""

    id: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    e2e_latency: float | None = None
    weight_version: str | None = None
    output_token_logprobs: list[TokenCandidate] = msgspec.field(default_factory=list)
    output_top_logprobs: list[list[TokenCandidate] | None] = msgspec.field(default_factory=list)
    input_token_logprobs: list[TokenCandidate] = msgspec.field(default_factory=list)
    input_top_logprobs: list[list[TokenCandidate] | None] = msgspec.field(default_factory=list)


class GenerateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One ``/generate`` result (also each cumulative streaming chunk)."""

    text: str
    meta_info: MetaInfo
    output_ids: list[int] = msgspec.field(default_factory=list)


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    message: str = ""
    type: str | None = None
    code: int | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """An error body: ``{"error": "text"}`` (0.5.23 contract gate) or ``{"error": {"message": ...}}``."""

    error: str | ErrorDetail

    @property
    def message(self) -> str:
        return self.error if isinstance(self.error, str) else self.error.message


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /model_info`` (0.5.23) or ``/get_model_info`` (0.5.2)."""

    model_path: str = ""
    served_model_name: str | None = None
    tokenizer_path: str | None = None
    is_generation: bool = True
    weight_version: str | None = None
    reasoning_parser: str | None = None


response_decoder = msgspec.json.Decoder(GenerateResponse)
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
model_info_decoder = msgspec.json.Decoder(ModelInfo)
encoder = msgspec.json.Encoder()
