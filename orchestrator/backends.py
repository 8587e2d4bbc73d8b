"""Build the intent backends and the cascade from :class:`~orchestrator.settings.Settings`.

``SRAQ_INTENT_TIERS=embedded,sglang,openai`` lists the tiers in cascade order; each tier reads its own
URL/model/threshold/deadline variables (``SRAQ_SGLANG_*``, ``SRAQ_OPENAI_*``, ``SRAQ_EMBEDDED_*``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from intent.backend import Backend
from intent.calibration import Calibration
from intent.router import Router, Tier
from intent.sglang import SGLangBackend, SGLangConfig
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from intent.openai_backend import OpenAIBackend

TIER_NAMES = ("embedded", "sglang", "openai")


class TierConfigError(ValueError):
    """A tier name or its configuration is not usable (exit code 2 in the CLI)."""


def _calibration(path: str | None) -> Calibration:
    if not path:
        return Calibration()
    try:
        return Calibration.load(path)
    except (OSError, ValueError) as exc:
        raise TierConfigError(f"cannot read calibration {path}: {exc}") from exc


def sglang_backend(settings: Settings) -> SGLangBackend:
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


def openai_backend(settings: Settings) -> OpenAIBackend:
    from intent.openai_backend import OpenAIBackend, OpenAIConfig  # the openai package takes ~1 s to import

    if not settings.openai_model:
        raise TierConfigError("the openai tier needs SRAQ_OPENAI_MODEL (and usually SRAQ_OPENAI_BASE_URL)")
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


def embedded_backend(settings: Settings) -> Backend:
    """The CPU tier (issue 6). Resolved lazily so this module works before that tier lands."""
    try:
        module: Any = importlib.import_module("intent.embedded")
    except ImportError as exc:
        raise TierConfigError("the embedded tier is not available in this build") from exc
    factory = getattr(module, "from_settings", None) or getattr(module, "build_embedded", None)
    if factory is None:
        raise TierConfigError("intent.embedded has no from_settings/build_embedded factory")
    backend: Backend = factory(settings)
    return backend


def tier_backend(name: str, settings: Settings) -> Backend:
    """One tier's backend alone (no cascade), e.g. for ``sraq intent eval --backend sglang``."""
    match name:
        case "sglang":
            return sglang_backend(settings)
        case "openai":
            return openai_backend(settings)
        case "embedded":
            return embedded_backend(settings)
        case _:
            raise TierConfigError(f"unknown intent tier {name!r} (known: {', '.join(TIER_NAMES)})")


def build_tiers(settings: Settings) -> list[Tier]:
    names = settings.tiers()
    if not names:
        raise TierConfigError("SRAQ_INTENT_TIERS is empty")
    tiers: list[Tier] = []
    for name in names:
        backend = tier_backend(name, settings)  # backends open connections lazily: nothing to undo on error
        match name:
            case "sglang":
                hedge = settings.sglang_hedge_ms / 1000 if settings.sglang_hedge_ms else None
                tier = Tier(backend, settings.sglang_threshold, settings.sglang_deadline_ms / 1000, hedge)
            case "openai":
                tier = Tier(backend, settings.openai_threshold, settings.openai_deadline_ms / 1000)
            case _:
                tier = Tier(backend, settings.embedded_threshold, settings.embedded_deadline_ms / 1000)
        tiers.append(tier)
    return tiers


def build_backend(settings: Settings) -> Router:
    """The cascade over ``SRAQ_INTENT_TIERS`` (a router even for one tier: thresholds and paths apply)."""
    return Router(build_tiers(settings))
