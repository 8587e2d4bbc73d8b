"""Helpers shared by the intent backend tests: requests and in-process stand-in servers."""

from __future__ import annotations

import time
from collections.abc import Sequence

from intent.backend import DecisionRequest
from intent.contract import ChatMessage, TaskInfo
from intent.stub_server import Latency, StubConfig

OPEN_TASKS = [
    TaskInfo(id="task-1", summary="Find flights to Porto in June"),
    TaskInfo(id="task-2", summary="Book a table for dinner tonight"),
    TaskInfo(id="task-3", summary="Order a birthday present", status="completed"),
]


def request(
    text: str,
    tasks: Sequence[TaskInfo] = OPEN_TASKS,
    deadline_s: float | None = 5.0,
    role: str = "user",
    turn_id: str = "turn-1",
) -> DecisionRequest:
    return DecisionRequest(
        conversation_id="conv-1",
        turn_id=turn_id,
        transcript=[
            ChatMessage(role="user", content="hi there"),
            ChatMessage(role="assistant", content="Hello! How can I help?"),
            ChatMessage(role=role, content=text),
        ],
        tasks=list(tasks),
        deadline=None if deadline_s is None else time.monotonic() + deadline_s,
    )


def fast(**kwargs: object) -> StubConfig:
    """A stand-in server answering in ~5 ms (plus whatever faults are asked for)."""
    return StubConfig(latency=Latency(kind="fixed", a=5.0), **kwargs)  # type: ignore[arg-type]
