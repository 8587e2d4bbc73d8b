"""``scripted``: a deterministic rule backend FOR TESTS AND BENCHMARKS ONLY — it is not a model.

It reads the last transcript message and maps a few literal prefixes to intents, so the loop can be
exercised end to end (and its overhead measured) without any model:

=====================================  ===============================================================
last message                           decision
=====================================  ===============================================================
``start: X``                           ``start_task(X)``
``update: task-N: X``                  ``update_task(task-N, X)``
``cancel: task-N: X``                  ``cancel_task(task-N, X)``
``noop``                               ``noop``
``undecided``                          raises :class:`~intent.backend.Undecided`
``raise: X``                           raises :class:`~intent.backend.BackendError`
``crash: X``                           raises ``RuntimeError`` (an unexpected router bug)
``sleep: S``                           sleeps S seconds, then replies (times out past the deadline)
a tool message (task event)            ``noop``
anything else                          ``reply("echo: <text>")``
=====================================  ===============================================================

``latency_ms`` adds a fixed simulated decision time (``SRAQ_SCRIPTED_LATENCY_MS``) to every call.
Select it with ``SRAQ_INTENT_TIERS=scripted``.
"""

from __future__ import annotations

import asyncio
import time

from intent.backend import BackendError, Decision, DecisionRequest, Undecided
from intent.contract import CancelTask, Intent, Noop, Reply, StartTask, UpdateTask


class ScriptedBackend:
    """Deterministic test/bench router (see the module docstring); confidence is always 1.0."""

    name = "scripted"

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.calls = 0

    async def decide(self, request: DecisionRequest) -> Decision:
        started = time.perf_counter()
        self.calls += 1
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        last = request.transcript[-1] if request.transcript else None
        text = last.content.strip() if last is not None else ""
        intent = await self._intent(text, last is not None and last.role == "tool")
        return Decision(
            intent=intent,
            confidence=1.0,
            tier=self.name,
            latency_ms=(time.perf_counter() - started) * 1000,
            raw=text[:200],
            confidence_source="constant",
        )

    async def _intent(self, text: str, is_tool: bool) -> Intent:
        if is_tool:
            return Noop()
        head, _, rest = text.partition(":")
        rest = rest.strip()
        match head.strip().lower():
            case "start":
                return StartTask(rest)
            case "update":
                task_id, _, explanation = rest.partition(":")
                return UpdateTask(task_id.strip(), explanation.strip())
            case "cancel":
                task_id, _, explanation = rest.partition(":")
                return CancelTask(task_id.strip(), explanation.strip())
            case "noop" if not rest:
                return Noop()
            case "undecided" if not rest:
                raise Undecided("scripted: told to be undecided")
            case "raise":
                raise BackendError(self.name, rest or "told to fail")
            case "crash":
                raise RuntimeError(rest or "scripted crash")
            case "sleep":
                await asyncio.sleep(float(rest))
                return Reply(f"slept {rest}")
        return Reply(f"echo: {text}")

    async def aclose(self) -> None:
        return None
