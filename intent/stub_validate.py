"""Request validation of the stand-in server, replicating SGLang 0.5.23's rules and error bodies.

Read from the 0.5.23 wheel: ``entrypoints/api_contract.py`` + the generated ``api/v1/api_types.py``
(the contract gate: unknown *sampling* keys and wrong types are a 400 ``{"error": "<serde text>"}``;
unknown *top-level* keys are ignored), then ``SamplingParams.verify`` (value ranges and grammar
exclusivity: a 400 ``{"error": {"message": ...}}``), then grammar compilation (``Failed to compile
json grammar: ...``, also 400). The OpenAI route answers pydantic-style
``{"object": "error", "message", "type", "param", "code"}`` bodies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

#: SGLang 0.5.23's sampling keys, in the order its unknown-field message lists them.
SAMPLING_FIELDS = (
    "max_new_tokens",
    "stop",
    "stop_token_ids",
    "stop_regex",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_new_tokens",
    "n",
    "json_schema",
    "regex",
    "ebnf",
    "structural_tag",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "stream_interval",
    "logit_bias",
    "sampling_seed",
    "custom_params",
    "beam_width",
    "watermark",
    "choice",
)


class ContractError(ValueError):
    """The 0.5.23 contract gate's rejection (400 with ``{"error": str}``)."""


class RequestError(ValueError):
    """A ValueError raised past the gate (400 with ``{"error": {"message": str}}``)."""


def _unexpected(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f'string "{v}"'
    return "sequence" if isinstance(v, list) else "map" if isinstance(v, dict) else type(v).__name__


def _bad(v: Any, expected: str) -> ContractError:
    return ContractError(f"invalid type: {_unexpected(v)}, expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: Any) -> None:
    if not _is_int(v):
        raise _bad(v, "i64")


def _float(v: Any) -> None:
    if not (_is_int(v) or isinstance(v, float)):
        raise _bad(v, "f64")


def _str(v: Any) -> None:
    if not isinstance(v, str):
        raise _bad(v, "a string")


def _bool(v: Any) -> None:
    if not isinstance(v, bool):
        raise _bad(v, "a boolean")


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _or_list(pred: Callable[[Any], bool], element: str, type_name: str) -> Callable[[Any], None]:
    """A scalar or an array of scalars (``StringOrList`` and friends), with serde's wording."""

    def run(v: Any) -> None:
        if isinstance(v, list):
            for e in v:
                if not pred(e):
                    raise _bad(e, element)
        elif not pred(v):
            raise _bad(v, f"a value or an array of values for {type_name}")

    return run


_STRS = _or_list(_is_str, "a string", "StringOrList")
_BOOLS = _or_list(_is_bool, "a boolean", "BoolOrList")
_INTS = _or_list(_is_int, "i64", "Int64OrList")


_ARRAY_OF = "a value or an array of values for"


def _each(check: Callable[[Any], None], values: Iterable[Any]) -> None:
    for v in values:
        check(v)


def _any(v: Any) -> None:
    return None


_SAMPLING_CHECKS: dict[str, Callable[[Any], None]] = {
    "max_new_tokens": _int,
    "stop": _STRS,
    "stop_token_ids": _INTS,
    "stop_regex": _STRS,
    "temperature": _float,
    "top_p": _float,
    "top_k": _int,
    "min_p": _float,
    "frequency_penalty": _float,
    "presence_penalty": _float,
    "repetition_penalty": _float,
    "min_new_tokens": _int,
    "n": _int,
    "json_schema": _str,
    "regex": _str,
    "ebnf": _str,
    "structural_tag": _str,
    "ignore_eos": _bool,
    "skip_special_tokens": _bool,
    "spaces_between_special_tokens": _bool,
    "no_stop_trim": _bool,
    "stream_interval": _int,
    "logit_bias": lambda v: _each(_float, v.values()) if isinstance(v, dict) else _bad_raise(v, "a map"),
    "sampling_seed": _int,
    "custom_params": _any,
    "beam_width": _int,
    "watermark": lambda v: None if isinstance(v, dict) else _bad_raise(v, "struct WatermarkRequestConfig"),
    "choice": lambda v: _each(_str, v) if isinstance(v, list) else _bad_raise(v, "a sequence"),
}

_TOP_CHECKS: dict[str, Callable[[Any], None]] = {
    "rid": _STRS,
    "text": _STRS,
    "input_ids": lambda v: (
        None if isinstance(v, list) else _bad_raise(v, "a value or an array of values for TokenIdsOrList")
    ),
    "stream": _bool,
    "return_logprob": _BOOLS,
    "logprob_start_len": _INTS,
    "top_logprobs_num": _INTS,
    "return_text_in_logprobs": _bool,
    "require_reasoning": _bool,
    "lora_path": _STRS,
    "routing_key": _str,
    "session_id": _str,
    "priority": _int,
    "return_prompt_token_ids": _bool,
}


def _bad_raise(v: Any, expected: str) -> None:
    raise _bad(v, expected)


def _unknown(key: str) -> ContractError:
    listed = ", ".join(f"`{f}`" for f in SAMPLING_FIELDS)
    return ContractError(f"unknown field `{key}`, expected one of {listed}")


def check_generate(body: Any) -> dict[str, Any]:
    """Apply the contract gate, then ``normalize``/``verify``; returns the effective sampling params.

    Raises :class:`ContractError` or :class:`RequestError` with SGLang's own wording.
    """
    if not isinstance(body, dict):
        raise _bad(body, "struct GenerateRequest")
    for key, value in body.items():
        if key in _TOP_CHECKS and value is not None:
            _TOP_CHECKS[key](value)
    if isinstance(body.get("text"), list) or (body.get("input_ids") and isinstance(body["input_ids"][0], list)):
        raise RequestError("the sraq stand-in server does not serve batch requests")
    raw = body.get("sampling_params") or {}
    if isinstance(raw, list):
        raise RequestError("the sraq stand-in server does not serve batch requests")
    if not isinstance(raw, dict):
        raise _bad(raw, "a value or an array of values for SamplingParamsOrList")
    for key, value in raw.items():
        if key not in _SAMPLING_CHECKS:
            raise _unknown(key)
        if value is not None:
            _SAMPLING_CHECKS[key](value)
    if body.get("text") is None and not body.get("input_ids"):
        raise RequestError("Either text, input_ids or input_embeds should be provided.")
    params = {k: v for k, v in raw.items() if v is not None and v != ""}
    _verify(params)
    return params


def _verify(p: dict[str, Any]) -> None:
    """``SamplingParams.verify`` of 0.5.23 (the checks a client can trip)."""
    t = float(p.get("temperature", 1.0))
    if not math.isfinite(t) or t < 0.0:
        raise RequestError(f"temperature must be a non-negative finite number, got {t}.")
    top_p = float(p.get("top_p", 1.0))
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}.")
    top_k = int(p.get("top_k", 1 << 30))
    if top_k < 1 and top_k != -1:
        raise RequestError(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
    mx = int(p.get("max_new_tokens", 128))
    if mx < 0:
        raise RequestError(f"max_new_tokens must be at least 0, got {mx}.")
    mn = int(p.get("min_new_tokens", 0))
    if not 0 <= mn <= mx:
        raise RequestError(f"min_new_tokens must be in [0, max_new_tokens({mx})], got {mn}.")
    if sum(p.get(g) is not None for g in ("json_schema", "regex", "ebnf", "structural_tag")) > 1:
        raise RequestError("Only one of json_schema, regex, ebnf, or structural_tag can be set.")
    if "json_schema" in p:
        try:
            schema = json.loads(p["json_schema"])
        except ValueError as exc:
            raise RequestError(f"Failed to compile json grammar: {exc}") from None
        if not isinstance(schema, dict):
            raise RequestError("Failed to compile json grammar: schema must be an object")


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max")


def check_chat(body: Any, harmony_model: bool = True) -> None:
    """``ChatCompletionRequest`` validation (pydantic types; unknown fields ignored) + serving checks."""
    if not isinstance(body, dict):
        raise RequestError("Input should be a valid dictionary or object to extract fields from")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestError(f"messages: Input should be a valid list, got {_unexpected(messages)}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError("messages: each message needs a string role")
    types: dict[str, Callable[[Any], bool]] = {
        "temperature": lambda v: _is_int(v) or isinstance(v, float),
        "top_p": lambda v: _is_int(v) or isinstance(v, float),
        "max_tokens": _is_int,
        "max_completion_tokens": _is_int,
        "logprobs": lambda v: isinstance(v, bool),
        "top_logprobs": _is_int,
        "stream": lambda v: isinstance(v, bool),
        "model": lambda v: isinstance(v, str),
        "n": _is_int,
    }
    for key, ok in types.items():
        if body.get(key) is not None and not ok(body[key]):
            raise RequestError(f"{key}: invalid type {_unexpected(body[key])}")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise RequestError("response_format.type: Input should be 'text', 'json_object' or 'json_schema'")
        js = rf.get("json_schema")
        if rf["type"] == "json_schema" and js is not None:
            if not isinstance(js, dict) or not isinstance(js.get("name"), str):
                raise RequestError("response_format.json_schema.name: Field required")
            if js.get("strict") is not None and not isinstance(js["strict"], bool):
                raise RequestError("response_format.json_schema.strict: Input should be a valid boolean")
            if js.get("schema") is not None and not isinstance(js["schema"], dict):
                raise RequestError("response_format.json_schema.schema: Input should be a valid dictionary")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not (effort in REASONING_EFFORTS or (isinstance(effort, float) and 0.0 <= effort <= 0.99)):
            raise RequestError(f"reasoning_effort: invalid value {effort!r}")
        if harmony_model and effort == "none":
            raise RequestError("Harmony does not support reasoning effort none")
    if not messages:
        raise RequestError("Messages cannot be empty.")
