"""Build the backend the loop asks for decisions, from ``Settings`` (``SRAQ_INTENT_TIERS``).

One builder per tier name in :data:`BUILDERS`. A single tier is used as is (its raw confidence, no
threshold: what ``sraq intent eval --backend sglang`` measures); several tiers become a cascade
:class:`~intent.router.Router` with each tier's threshold and deadline from :data:`TIER_LIMITS`
(``SRAQ_SGLANG_THRESHOLD``, ``SRAQ_OPENAI_DEADLINE_MS``, ...). ``scripted`` is the deterministic
test/bench backend of :mod:`orchestrator.scripted` (not a model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from intent.backend import Backend
from intent.calibration import Calibration
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from intent.openai_backend import OpenAIBackend
    from intent.sglang import SGLangBackend

# The HTTP tiers (aiohttp, openai) are imported by their builders: every ``sraq`` command imports this
# module, and those packages cost ~1 s of start-up.


class BackendConfigError(ValueError):
    """The configured tiers cannot be built (unknown name, missing artefact, missing module)."""


def _calibration(path: str | None) -> Calibration:
    if not path:
        return Calibration()
    try:
        return Calibration.load(path)
    except (OSError, ValueError) as exc:
        raise BackendConfigError(f"cannot read calibration {path}: {exc}") from None


def _scripted(settings: Settings) -> Backend:
    from orchestrator.scripted import ScriptedBackend

    return ScriptedBackend(latency_ms=settings.scripted_latency_ms)


def _embedded(settings: Settings) -> Backend:
    try:
        module = importlib.import_module("intent.embedded")
    except ImportError as exc:
        raise BackendConfigError(f"the embedded tier is not available in this build ({exc})") from None
    if settings.embedded_processes > 0:
        from intent.embedded_model import EmbeddedModel
        from intent.embedded_process import ProcessEmbeddedBackend

        try:  # refuse a bad artefact now; the children load (and warm up) their own copy
            EmbeddedModel.load(settings.embedded_model)
        except Exception as exc:
            raise BackendConfigError(f"cannot load the embedded model: {exc}") from None
        return ProcessEmbeddedBackend(settings.embedded_model, processes=settings.embedded_processes)
    try:
        backend: Backend = module.EmbeddedBackend.load(settings.embedded_model)
    except Exception as exc:
        raise BackendConfigError(f"cannot load the embedded model: {exc}") from None
    return backend


def _sglang(settings: Settings) -> SGLangBackend:
    from intent.sglang import SGLangBackend, SGLangConfig

    return SGLangBackend(
        SGLangConfig(
            url=settings.sglang_url,
            output_format=settings.sglang_format,
            max_new_tokens=settings.sglang_max_new_tokens,
            lora_path=settings.sglang_lora_path,
            stream=settings.sglang_stream,
            calibration=_calibration(settings.sglang_calibration),
            timeout_s=settings.sglang_deadline_ms / 1000,
        )
    )


def _openai(settings: Settings) -> OpenAIBackend:
    from intent.openai_backend import OpenAIBackend, OpenAIConfig  # the openai package takes ~1 s to import

    if not settings.openai_model:
        raise BackendConfigError("the openai tier needs SRAQ_OPENAI_MODEL (and usually SRAQ_OPENAI_BASE_URL)")
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key is not None else None
    config = OpenAIConfig(
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        reasoning_effort=settings.openai_reasoning_effort or None,
        logprobs=settings.openai_logprobs,
        calibration=_calibration(settings.openai_calibration),
        timeout_s=settings.openai_deadline_ms / 1000,
    )
    return OpenAIBackend(config, api_key=key)


#: Tier name -> builder.
BUILDERS: dict[str, Callable[[Settings], Backend]] = {
    "scripted": _scripted,
    "embedded": _embedded,
    "sglang": _sglang,
    "openai": _openai,
}


def _limits(name: str, s: Settings) -> tuple[float, float, float | None]:
    """(threshold, deadline seconds, hedge-after seconds) of a tier inside a cascade."""
    match name:
        case "sglang":
            return s.sglang_threshold, s.sglang_deadline_ms / 1000, (s.sglang_hedge_ms or 0) / 1000 or None
        case "openai":
            return s.openai_threshold, s.openai_deadline_ms / 1000, None
        case "embedded":
            return s.embedded_threshold, s.embedded_deadline_ms / 1000, None
        case _:
            return 0.0, s.decision_timeout_ms / 1000, None


def build_backend(settings: Settings) -> Backend:
    """One tier as is, or the cascade router over several; raises :class:`BackendConfigError` clearly."""
    names = settings.tiers()
    if not names:
        raise BackendConfigError("SRAQ_INTENT_TIERS is empty; name at least one tier (e.g. embedded)")
    unknown = [t for t in names if t not in BUILDERS]
    if unknown:
        raise BackendConfigError(f"unknown intent tier(s) {unknown}; known: {sorted(BUILDERS)}")
    if len(names) == 1:
        return BUILDERS[names[0]](settings)
    from intent.router import Router, Tier

    # backends open their connections lazily, so nothing needs closing if a later tier fails to build
    return Router([Tier(BUILDERS[n](settings), *_limits(n, settings)) for n in names])
