"""The intent contract: five actions as a tagged union, and the task view decisions are made against.

``reply(text)``, ``start_task(explanation)``, ``update_task(task_id, explanation)``,
``cancel_task(task_id, explanation)``, ``noop``. ``update_task`` and ``cancel_task`` must name an open
task of the conversation's ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import ClassVar

import msgspec

from intent.errors import InvalidDecision


class Action(str, Enum):
    """The five actions a decision can take."""

    REPLY = "reply"
    START_TASK = "start_task"
    UPDATE_TASK = "update_task"
    CANCEL_TASK = "cancel_task"
    NOOP = "noop"

    @property
    def needs_task(self) -> bool:
        return self in TASK_ACTIONS


TASK_ACTIONS = frozenset({Action.UPDATE_TASK, Action.CANCEL_TASK})
ACTIONS: tuple[Action, ...] = tuple(Action)

#: Argument names of each action, in wire order.
ACTION_ARGS: dict[Action, tuple[str, ...]] = {
    Action.REPLY: ("text",),
    Action.START_TASK: ("explanation",),
    Action.UPDATE_TASK: ("task_id", "explanation"),
    Action.CANCEL_TASK: ("task_id", "explanation"),
    Action.NOOP: (),
}


class Reply(msgspec.Struct, frozen=True):
    text: str
    action: ClassVar[Action] = Action.REPLY

    def args(self) -> dict[str, str]:
        return {"text": self.text}


class StartTask(msgspec.Struct, frozen=True):
    explanation: str
    action: ClassVar[Action] = Action.START_TASK

    def args(self) -> dict[str, str]:
        return {"explanation": self.explanation}


class UpdateTask(msgspec.Struct, frozen=True):
    task_id: str
    explanation: str
    action: ClassVar[Action] = Action.UPDATE_TASK

    def args(self) -> dict[str, str]:
        return {"task_id": self.task_id, "explanation": self.explanation}


class CancelTask(msgspec.Struct, frozen=True):
    task_id: str
    explanation: str
    action: ClassVar[Action] = Action.CANCEL_TASK

    def args(self) -> dict[str, str]:
        return {"task_id": self.task_id, "explanation": self.explanation}


class Noop(msgspec.Struct, frozen=True):
    action: ClassVar[Action] = Action.NOOP

    def args(self) -> dict[str, str]:
        return {}


Intent = Reply | StartTask | UpdateTask | CancelTask | Noop


def make_intent(action: Action | str, args: dict[str, str]) -> Intent:
    """Build an intent from an action name and its string args; unknown or missing args are refused."""
    try:
        act = Action(action)
    except ValueError:
        raise InvalidDecision(f"unknown action {action!r}") from None
    expected = ACTION_ARGS[act]
    extra = set(args) - set(expected)
    if extra:
        raise InvalidDecision(f"{act.value}: unexpected args {sorted(extra)}")
    missing = [name for name in expected if name not in args]
    if missing:
        raise InvalidDecision(f"{act.value}: missing args {missing}")
    for name in expected:
        if not isinstance(args[name], str):
            raise InvalidDecision(f"{act.value}: arg {name!r} must be a string")
    match act:
        case Action.REPLY:
            return Reply(args["text"])
        case Action.START_TASK:
            return StartTask(args["explanation"])
        case Action.UPDATE_TASK:
            return UpdateTask(_task_id(args["task_id"]), args["explanation"])
        case Action.CANCEL_TASK:
            return CancelTask(_task_id(args["task_id"]), args["explanation"])
        case Action.NOOP:
            return Noop()


def _task_id(raw: str) -> str:
    task_id = raw.strip()
    if not task_id:
        raise InvalidDecision("empty task id")
    return task_id


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the intent layer sees of a ledger task (it does not import the ledger).

    ``gc=False`` (also :class:`ChatMessage`): scalar fields only, never in a reference cycle, and
    many of them live in the orchestrator's caches: the garbage collector need not scan them.
    """

    id: str
    summary: str
    last_update: str = ""
    status: str = "running"


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One transcript message as the intent layer sees it (untracked by the garbage collector)."""

    role: str
    content: str


def validate(intent: Intent, open_task_ids: Iterable[str]) -> Intent:
    """Check ``intent`` against the open tasks of a ledger; returns it or raises InvalidDecision."""
    if isinstance(intent, UpdateTask | CancelTask):
        open_ids = set(open_task_ids)
        if intent.task_id not in open_ids:
            known = ", ".join(sorted(open_ids)) or "none"
            raise InvalidDecision(
                f"{intent.action.value} names {intent.task_id!r}, which is not an open task (open: {known})"
            )
    return intent
