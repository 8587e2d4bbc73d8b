"""The one interface every decision tier implements, and the request/decision it exchanges.

A backend turns a :class:`DecisionRequest` (transcript, open tasks, deadline) into a
:class:`Decision` (intent, calibrated confidence, tier, latency, tokens, raw output). Backends raise
:class:`BackendError` (or its subclasses) for anything that prevents a decision, never an untyped
exception; an output that does not parse or names a non-open task raises
:class:`~intent.errors.InvalidDecision` carrying the raw text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from intent.contract import ChatMessage, Intent, TaskInfo


class DecisionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a tier decides on. ``deadline`` is a ``time.monotonic()`` instant (None: no deadline)."""

    conversation_id: str
    turn_id: str
    transcript: Sequence[ChatMessage]
    tasks: Sequence[TaskInfo]
    deadline: float | None = None

    @property
    def open_task_ids(self) -> list[str]:
        return [t.id for t in self.tasks if t.status in ("pending", "running")]

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None."""
        return None if self.deadline is None else self.deadline - time.monotonic()


class TierAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a cascade: which tier was asked, what it said, how long it took."""

    tier: str
    outcome: str  # "accepted" | "low_confidence" | "invalid" | "error" | "timeout"
    latency_ms: float
    confidence: float | None = None
    action: str | None = None
    detail: str | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """A tier's decision. ``confidence`` is calibrated, in [0, 1]."""

    intent: Intent
    confidence: float
    tier: str
    latency_ms: float
    raw: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    confidence_source: str = "model"  # "model" | "calibrated" | "constant" (server gave no logprobs)
    path: tuple[TierAttempt, ...] = ()
    server_latency_ms: float | None = None  # the server's own e2e latency (SGLang meta_info.e2e_latency)
    early_ms: float | None = None  # streaming: when action and task id were fixed (explanation may follow)
    transport_ms: float | None = None  # time inside the HTTP exchange (the rest of latency_ms is our overhead)
    action_probs: dict[str, float] | None = None  # uncalibrated, renormalised over the allowed actions


class BackendError(Exception):
    """A tier could not decide (transport error, server error, bad response)."""

    def __init__(self, tier: str, message: str) -> None:
        super().__init__(f"{tier}: {message}")
        self.tier = tier


class BackendTimeout(BackendError):
    """The tier did not answer before the request's deadline."""


class Undecided(Exception):
    """No tier produced an acceptable decision; the orchestrator commits a safe ``noop``."""

    def __init__(self, reason: str, path: Sequence[TierAttempt] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = tuple(path)


@runtime_checkable
class SyncBackend(Protocol):
    """A backend whose decision is CPU work only (no I/O, bounded time): a caller on an event loop may
    call :meth:`decide_sync` directly instead of awaiting :meth:`Backend.decide` under a timeout."""

    name: str

    def decide_sync(self, request: DecisionRequest) -> Decision:
        """The same decision :meth:`Backend.decide` returns, computed inline."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A decision tier (embedded, sglang, openai, or a cascade of them)."""

    name: str

    async def decide(self, request: DecisionRequest) -> Decision:
        """Decide the next action. Raises BackendError, BackendTimeout, InvalidDecision or Undecided."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources; idempotent."""
        ...
