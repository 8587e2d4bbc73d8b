"""Typed records of the task ledger: task status machine, tasks, operations, snapshots, audit."""

from __future__ import annotations

from enum import Enum

import msgspec


class TaskStatus(str, Enum):
    """Lifecycle of a task: ``pending -> running -> completed | failed``; any open state -> ``cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_open(self) -> bool:
        return self in OPEN_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


OPEN_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class TaskEvent(str, Enum):
    """Lifecycle events reported by workers."""

    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"


class Task(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One task of a conversation's ledger. Times are Unix milliseconds.

    ``gc=False`` (here and on :class:`Message`): scalar fields only, so never part of a reference cycle;
    the orchestrator keeps thousands of them in its snapshot cache, which the garbage collector would
    otherwise scan on every full collection (tens of milliseconds of pause).
    """

    id: str
    summary: str
    status: TaskStatus
    last_update: str
    version: int
    attempt: int
    created_at: int
    updated_at: int
    created_by_turn: str
    updated_by_turn: str
    result: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status.is_open


# ---------------------------------------------------------------- operations
# The ledger knows nothing about intents: it applies these typed operations.


class StartOp(msgspec.Struct, frozen=True, tag="start", tag_field="op"):
    """Open a new task ``task-N`` (N from the conversation's counter) in state ``pending``."""

    summary: str


class UpdateOp(msgspec.Struct, frozen=True, tag="update", tag_field="op"):
    """Change an open task: ``last_update`` becomes ``text``; a dispatch entry tells the worker."""

    task_id: str
    text: str


class CancelOp(msgspec.Struct, frozen=True, tag="cancel", tag_field="op"):
    """Cancel an open task (final)."""

    task_id: str
    reason: str


class EventOp(msgspec.Struct, frozen=True, tag="event", tag_field="op"):
    """A lifecycle event from a worker. Events of an older attempt than the task's are refused."""

    task_id: str
    event: TaskEvent
    text: str = ""
    attempt: int = 1


class NoteOp(msgspec.Struct, frozen=True, tag="note", tag_field="op"):
    """Record a decision that changes no task (``reply``, ``noop``) in the audit trail."""

    text: str = ""


Op = StartOp | UpdateOp | CancelOp | EventOp | NoteOp


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One transcript message (untracked by the garbage collector: see :class:`Task`)."""

    role: str
    content: str
    turn_id: str = ""
    at: int = 0
    task_id: str | None = None


class DecisionMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What the audit trail records about the decision behind an apply."""

    action: str
    tier: str | None = None
    confidence: float | None = None
    latency_ms: float | None = None
    reason: str | None = None
    raw: str | None = None


class DecisionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Written to the partition's decisions stream in the same atomic step as the commit."""

    conversation_id: str
    turn_id: str
    action: str
    args: dict[str, str]
    tier: str | None
    confidence: float | None
    latency_ms: float | None
    ledger_version: int = 0
    reason: str | None = None
    path: list[dict[str, str | float | None]] = msgspec.field(default_factory=list)


class Ack(msgspec.Struct, frozen=True):
    """A stream entry to XACK in the same atomic step as the commit."""

    stream: str
    group: str
    entry_id: str


class Relay(msgspec.Struct, frozen=True):
    """The outbox relay a commit hands its new outbox entries to, in the same atomic step.

    The commit reads them for consumer ``consumer`` of group ``group`` (as that relay's own
    ``XREADGROUP`` would: they are in its pending list from then on) and returns them, so the relay
    hosted in the committing process needs no blocking read of its own (workers/dispatcher.py).
    """

    group: str
    consumer: str


#: An outbox stream entry as Redis returns it: entry id, fields.
OutboxRecord = tuple[bytes, dict[bytes, bytes]]


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of a successful apply (or of the earlier apply of the same turn id).

    For a fresh apply, ``at`` is the commit time (Unix ms, the ``at`` of the transcript messages it
    appended) and ``tasks`` the new state of every task it wrote, so a caller can advance its copy of
    the ledger without reading it back. A duplicate carries neither (``at`` 0, no tasks).
    ``delivered``: with a :class:`Relay`, the outbox entries this apply handed to it (its own, and
    any earlier ones no relay had read yet), oldest first.
    """

    version: int
    created: list[str]
    touched: list[str]
    duplicate: bool = False
    at: int = 0
    tasks: list[Task] = msgspec.field(default_factory=list)
    delivered: list[OutboxRecord] = msgspec.field(default_factory=list)


class LedgerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A consistent view of one conversation, read in one round trip."""

    conversation_id: str
    version: int
    tasks: list[Task]
    transcript: list[Message]
    applied_turns: int

    @property
    def open_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.is_open]

    def task(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks if t.id == task_id), None)


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One append-only audit record: who changed what, from which turn and decision, before/after.

    ``at`` is the commit time in epoch milliseconds (the Redis server clock), like ``Task.created_at``
    and ``Message.at``; ``sraq audit --json`` prints it as is.
    """

    entry_id: str
    turn_id: str
    op: str
    task_id: str | None
    action: str
    tier: str | None
    confidence: float | None
    latency_ms: float | None
    reason: str | None
    ledger_version: int
    task_version: int | None
    at: float
    before: Task | None
    after: Task | None
    raw: str | None = None


class OutboxKind(str, Enum):
    START = "start"
    UPDATE = "update"
    CANCEL = "cancel"


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A dispatch request written by the ledger commit, relayed to arq by the dispatcher."""

    entry_id: str
    kind: OutboxKind
    conversation_id: str
    task_id: str
    attempt: int
    text: str
    turn_id: str
    ledger_version: int
