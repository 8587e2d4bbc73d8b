"""Typed rejections of a ledger apply. A rejected apply changed nothing."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger rejection."""


class VersionConflict(LedgerError):
    """The ledger moved since the caller read it (compare-and-set failed)."""

    def __init__(self, conversation_id: str, expected: int, current: int) -> None:
        super().__init__(f"{conversation_id}: expected version {expected}, ledger is at {current}")
        self.conversation_id = conversation_id
        self.expected = expected
        self.current = current


class UnknownTask(LedgerError):
    def __init__(self, conversation_id: str, task_id: str) -> None:
        super().__init__(f"{conversation_id}: no task {task_id!r}")
        self.conversation_id = conversation_id
        self.task_id = task_id


class TaskClosed(LedgerError):
    """The task is in a terminal state; terminal states are final."""

    def __init__(self, conversation_id: str, task_id: str, status: str) -> None:
        super().__init__(f"{conversation_id}: task {task_id} is {status}")
        self.conversation_id = conversation_id
        self.task_id = task_id
        self.status = status


class StaleAttempt(LedgerError):
    """An event of an attempt older than the task's current attempt (a superseded worker run)."""

    def __init__(self, conversation_id: str, task_id: str, attempt: int, current: int) -> None:
        super().__init__(f"{conversation_id}: {task_id} event of attempt {attempt} < current {current}")
        self.conversation_id = conversation_id
        self.task_id = task_id
        self.attempt = attempt
        self.current = current


class LeaseLost(LedgerError):
    """The fencing token no longer owns the partition: a stale owner must not write."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"lease of partition {partition} lost")
        self.partition = partition


class InvalidOp(LedgerError):
    """The operation list itself is malformed (empty summary, no ops, ...)."""
