"""Task lifecycle events, published as ``role=tool`` turns on the conversation's stream.

Workers never write the ledger: the orchestrator applies each event turn (an ``EventOp`` carrying the
attempt), so a late event of a cancelled or superseded attempt is refused there (``TaskClosed`` /
``StaleAttempt``). Turn ids are deterministic (``<task>.a<attempt>.<seq>.<event>``): a re-published
event is a duplicate turn the ledger applies once.
"""

from __future__ import annotations

import structlog

from ledger import TaskEvent
from ledger.turns import Publisher, Role, Turn, make_turn

log = structlog.get_logger("sraq.workers.events")

_ELLIPSIS = " [truncated]"


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 (on a character boundary), marked when cut."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    keep = max(0, max_bytes - len(_ELLIPSIS.encode()))
    return raw[:keep].decode("utf-8", "ignore") + _ELLIPSIS


class EventReporter:
    """Publishes the events of one run (one attempt) of one task."""

    def __init__(
        self,
        publisher: Publisher,
        conversation_id: str,
        task_id: str,
        attempt: int,
        *,
        channel: str = "task",
    ) -> None:
        self.publisher = publisher
        self.conversation_id = conversation_id
        self.task_id = task_id
        self.attempt = attempt
        self.channel = channel
        self._seq = 0
        self.last: Turn | None = None

    def _turn(self, event: TaskEvent, text: str) -> Turn:
        self._seq += 1
        return make_turn(
            self.conversation_id,
            clip(text, self.publisher.max_content_bytes),
            role=Role.TOOL,
            turn_id=f"{self.task_id}.a{self.attempt}.{self._seq}.{event.value}",
            channel=self.channel,
            task_id=self.task_id,
            event=event,
            attempt=self.attempt,
            max_content_bytes=self.publisher.max_content_bytes,
        )

    async def emit(self, event: TaskEvent, text: str) -> Turn:
        turn = self._turn(event, text)
        await self.publisher.publish(turn)
        self.last = turn
        log.debug(
            "task_event",
            conversation_id=self.conversation_id,
            task_id=self.task_id,
            attempt=self.attempt,
            kind=event.value,
        )
        return turn

    async def started(self, text: str = "") -> Turn:
        return await self.emit(TaskEvent.STARTED, text or f"started (attempt {self.attempt})")

    async def progress(self, text: str) -> Turn:
        return await self.emit(TaskEvent.PROGRESS, text)

    async def completed(self, result: str) -> Turn:
        return await self.emit(TaskEvent.COMPLETED, result)

    async def failed(self, error: str) -> Turn:
        return await self.emit(TaskEvent.FAILED, error)
