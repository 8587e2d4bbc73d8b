"""Build the router the loop asks for decisions, from ``Settings`` (``SRAQ_INTENT_TIERS``).

One builder per tier name in :data:`BUILDERS`; other tiers (sglang, openai) and the cascade router
register here as they land. ``scripted`` is the deterministic test/bench backend of
:mod:`orchestrator.scripted` (not a model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from intent.backend import Backend
from orchestrator.settings import Settings


class BackendConfigError(ValueError):
    """The configured tiers cannot be built (unknown name, missing artefact, missing module)."""


def _scripted(settings: Settings) -> Backend:
    from orchestrator.scripted import ScriptedBackend

    return ScriptedBackend(latency_ms=settings.scripted_latency_ms)


def _embedded(settings: Settings) -> Backend:
    try:
        module = importlib.import_module("intent.embedded")
    except ImportError as exc:
        raise BackendConfigError(f"the embedded tier is not available in this build ({exc})") from None
    try:
        backend: Backend = module.EmbeddedBackend.load(settings.embedded_model)
    except Exception as exc:
        raise BackendConfigError(f"cannot load the embedded model: {exc}") from None
    return backend


#: Tier name -> builder. A single tier is used as is; several need a cascade router.
BUILDERS: dict[str, Callable[[Settings], Backend]] = {
    "scripted": _scripted,
    "embedded": _embedded,
}


def build_backend(settings: Settings) -> Backend:
    """The router for ``settings.tiers()``; raises :class:`BackendConfigError` with one clear sentence."""
    tiers = settings.tiers()
    if not tiers:
        raise BackendConfigError("SRAQ_INTENT_TIERS is empty; name at least one tier (e.g. embedded)")
    unknown = [t for t in tiers if t not in BUILDERS]
    if unknown:
        raise BackendConfigError(f"unknown intent tier(s) {unknown}; known: {sorted(BUILDERS)}")
    if len(tiers) > 1:
        raise BackendConfigError(f"a cascade of {tiers} needs the cascade router, which this build does not have")
    return BUILDERS[tiers[0]](settings)
