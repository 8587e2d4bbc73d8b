"""One turn: snapshot → decision → ledger ops → one atomic commit (fenced, with the XACK and the
decision event).

* The snapshot (version, tasks, transcript) comes from the :class:`~orchestrator.snapshots.SnapshotCache`
  (kept current by this instance's own commits) or, when it has none, one pipelined read.
* Task events (``role=tool`` with ``task_id``/``event``) apply their lifecycle change as an
  :class:`~ledger.EventOp` deterministically (no model needed); the router then sees the task *after*
  the event and decides whether to reply or wait. An event the ledger would refuse (unknown task,
  task already closed, stale attempt) is recorded as a note and not routed.
* User turns and tool turns are routed; ``assistant`` turns (what the assistant said) are recorded
  in the transcript without a decision.
* A version conflict (someone else wrote the ledger between read and commit) re-reads and
  re-decides, at most ``conflict_retries`` times, then commits an ``undecided`` noop.
* :class:`~ledger.LeaseLost` propagates at once: nothing is committed by a stale owner.
* Undecided, timeout, backend error, invalid decision, any exception of the router: the turn is
  committed as a ``noop`` with reason ``undecided``; its decision event carries the failure
  (``path`` ends with ``{"tier": "orchestrator", "outcome": "decision_failed", ...}``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from intent import CancelTask, ChatMessage, Intent, InvalidDecision, Noop, Reply, StartTask, TaskInfo, UpdateTask
from intent import validate as validate_intent
from intent.backend import (
    Backend,
    BackendError,
    BackendTimeout,
    DecisionRequest,
    SyncBackend,
    TierAttempt,
    Undecided,
)
from ledger import (
    Ack,
    ApplyCall,
    ApplyResult,
    CancelOp,
    DecisionEvent,
    DecisionMeta,
    EventOp,
    InvalidOp,
    Ledger,
    LedgerSnapshot,
    Message,
    NoteOp,
    Op,
    OutboxRecord,
    Relay,
    StaleAttempt,
    StartOp,
    Task,
    TaskClosed,
    TaskEvent,
    TaskStatus,
    UnknownTask,
    UpdateOp,
    VersionConflict,
)
from ledger.turns import Role, Turn
from orchestrator.batching import Coalescer
from orchestrator.membership import Lease
from orchestrator.metrics import Metrics
from orchestrator.partition import GROUP, Entry
from orchestrator.snapshots import SnapshotCache, View

log = structlog.get_logger("sraq.turn")

#: Closed tasks shown to the router besides every open one (context for "how did X go?").
RECENT_CLOSED = 5
_RETRYABLE = (VersionConflict, UnknownTask, TaskClosed, StaleAttempt)
PathItem = dict[str, str | float | None]
UNDECIDED = "undecided"


@dataclass(slots=True, frozen=True)
class TurnRecord:
    """What happened to one turn (for the bench and tests; also logged)."""

    conversation_id: str
    turn_id: str
    entry_id: str
    action: str
    tier: str | None
    reason: str | None
    version: int
    duplicate: bool
    model_ms: float
    overhead_ms: float
    published_at: float
    committed_at: float


@dataclass(slots=True)
class _Plan:
    ops: Sequence[Op]
    meta: DecisionMeta
    event: DecisionEvent
    model_s: float
    failure: str | None = None
    event_op: EventOp | None = None
    path: list[PathItem] = field(default_factory=list)


def _attempt(a: TierAttempt) -> PathItem:
    return {"tier": a.tier, "outcome": a.outcome, "latency_ms": a.latency_ms, "confidence": a.confidence,
            "action": a.action, "detail": a.detail}  # fmt: skip


def intent_ops(intent: Intent) -> list[Op]:
    """The ledger operations of a decided intent."""
    match intent:
        case Reply(text=text):
            return [NoteOp(text)]
        case StartTask(explanation=explanation):
            if not explanation.strip():
                raise InvalidDecision("start_task needs an explanation")
            return [StartOp(explanation)]
        case UpdateTask(task_id=task_id, explanation=explanation):
            return [UpdateOp(task_id, explanation)]
        case CancelTask(task_id=task_id, explanation=explanation):
            return [CancelOp(task_id, explanation)]
        case Noop():
            return [NoteOp("")]
    raise InvalidDecision(f"unknown intent {intent!r}")  # pragma: no cover - the union is closed


def event_check(turn: Turn, snap: LedgerSnapshot) -> tuple[EventOp | None, str | None]:
    """The EventOp of a task-event turn, or the reason the ledger would refuse it."""
    if turn.task_id is None or turn.event is None:
        return None, None
    task = snap.task(turn.task_id)
    attempt = turn.attempt or 1
    if task is None:
        return None, f"unknown task {turn.task_id}"
    if not task.is_open:
        return None, f"task {task.id} is {task.status.value}"
    if attempt < task.attempt:
        return None, f"stale attempt {attempt} < {task.attempt}"
    return EventOp(task.id, turn.event, text=turn.content, attempt=attempt), None


def _after_event(task: Task, op: EventOp) -> TaskInfo:
    status, update = task.status, op.text or task.last_update
    match op.event:
        case TaskEvent.STARTED | TaskEvent.PROGRESS:
            status = TaskStatus.RUNNING
        case TaskEvent.COMPLETED:
            status, update = TaskStatus.COMPLETED, "completed"
        case TaskEvent.FAILED:
            status = TaskStatus.FAILED
    return TaskInfo(id=task.id, summary=task.summary, last_update=update, status=status.value)


def task_view(snap: LedgerSnapshot, event: EventOp | None) -> list[TaskInfo]:
    """Every open task and the few most recent closed ones, as they are after ``event``."""
    infos: list[TaskInfo] = []
    for task in snap.tasks:
        if event is not None and task.id == event.task_id:
            infos.append(_after_event(task, event))
        else:
            infos.append(TaskInfo(id=task.id, summary=task.summary, last_update=task.last_update, status=task.status))
    open_ = [t for t in infos if t.status in ("pending", "running")]
    closed = [t for t in infos if t.status not in ("pending", "running")]
    return open_ + closed[-RECENT_CLOSED:]


class OutboxFeed(Protocol):
    """The outbox relay hosted in this process (:class:`workers.dispatcher.Dispatcher` with ``fed``):
    each commit reads its new outbox entries for ``relay`` and hands them to :meth:`deliver`."""

    @property
    def relay(self) -> Relay: ...

    def deliver(self, partition: int, entries: list[OutboxRecord]) -> None: ...


class TurnProcessor:
    """Processes one turn end to end; shared by every partition of an Orchestrator.

    ``outbox_feed``: the outbox relay the orchestrator hosts, if any (see :class:`OutboxFeed`).
    """

    def __init__(
        self,
        ledger: Ledger,
        backend: Backend,
        metrics: Metrics,
        *,
        coalescer: Coalescer | None = None,
        cache: SnapshotCache | None = None,
        decision_timeout_ms: int,
        conflict_retries: int,
        observer: Callable[[TurnRecord], None] | None = None,
        outbox_feed: OutboxFeed | None = None,
    ) -> None:
        self.ledger = ledger
        self.store = coalescer or Coalescer(ledger)
        self.cache = cache if cache is not None else SnapshotCache(0, ledger.transcript_max)
        self.backend = backend
        # a CPU-only tier is called inline: no timeout scope and no extra await per decision
        self._decide_sync = backend.decide_sync if isinstance(backend, SyncBackend) else None
        self.metrics = metrics
        self.decision_timeout = decision_timeout_ms / 1000
        self.conflict_retries = conflict_retries
        self.observer = observer
        self.outbox_feed = outbox_feed
        # bound once: calling the module's lazy proxy builds a new bound logger per call (per turn)
        self._log = log.bind()

    async def process(self, entry: Entry, lease: Lease) -> None:
        """Decide and commit ``entry``'s turn exactly once (a repeat is acknowledged as a duplicate)."""
        turn = entry.turn
        conv = turn.conversation_id
        ack = Ack(self.ledger.keys.partition(lease.partition).turns, GROUP, entry.entry_id)
        commit = _Commit(self.store, turn, lease, ack, self.outbox_feed)
        model_s = 0.0
        result: ApplyResult | None = None
        plan: _Plan | None = None
        for attempt in range(self.conflict_retries + 1):
            view, cached = await self._view(turn, lease.token, fresh=attempt > 0)
            plan = await self._plan(turn, view)
            model_s += plan.model_s
            if cached and plan.failure == "invalid" and attempt < self.conflict_retries:
                # e.g. a task id the cached ledger does not know: make sure it is not our copy that is behind
                self.cache.drop(conv)
                continue
            try:
                if plan.failure is not None:
                    result = await commit.fallback(plan)
                else:
                    result = await commit.apply(view.snapshot.version, plan)
            except _RETRYABLE as exc:
                self.cache.drop(conv)
                self.metrics.conflicts.inc()
                log.info("conflict", conversation_id=conv, turn_id=turn.turn_id, attempt=attempt, error=str(exc))
                continue
            except InvalidOp as exc:
                plan = self._failed(turn, plan.event_op, "invalid_op", f"ledger refused the ops: {exc}", plan.path)
                result = await commit.fallback(plan)
            except BaseException:
                self.cache.drop(conv)  # lease lost, Redis gone, cancelled: the commit's fate is unknown
                raise
            self.cache.committed(conv, lease.token, view, result, commit.sent)
            break
        if result is None or plan is None:
            self.cache.drop(conv)
            event_op = plan.event_op if plan is not None else None
            detail = f"ledger kept changing after {self.conflict_retries} re-decisions"
            plan = self._failed(turn, event_op, "conflict", detail, [])
            result = await commit.fallback(plan)
        # debug, not info: one line per turn would flood the log at thousands of turns/s.
        # decision_latency_ms: the model's time on this turn (every re-decision after a conflict
        # included); processing_ms: from the read of the entry to its commit (the decision included)
        self._log.debug(
            "turn_committed", conversation_id=conv, turn_id=turn.turn_id, entry_id=entry.entry_id,
            partition=lease.partition, token=lease.token, action=plan.meta.action, tier=plan.meta.tier,
            version=result.version, duplicate=result.duplicate, deliveries=entry.deliveries,
            decision_latency_ms=round(model_s * 1000, 3),
            processing_ms=round((time.perf_counter() - entry.read_at) * 1000, 3),
        )  # fmt: skip
        overhead_ms = max(0.0, (time.perf_counter() - entry.read_at - model_s) * 1000)
        self.metrics.overhead.observe(overhead_ms / 1000)
        self.metrics.turn_done(plan.meta.action, "duplicate" if result.duplicate else "committed")
        if plan.failure is not None:
            self.metrics.decision_failures.labels(plan.failure).inc()
            log.warning(
                "decision_failed",
                conversation_id=conv,
                turn_id=turn.turn_id,
                kind=plan.failure,
                detail=plan.meta.raw,
                partition=lease.partition,
            )
        if self.observer is not None:
            self.observer(
                TurnRecord(
                    conversation_id=conv,
                    turn_id=turn.turn_id,
                    entry_id=entry.entry_id,
                    action=plan.meta.action,
                    tier=plan.meta.tier,
                    reason=plan.meta.reason,
                    version=result.version,
                    duplicate=result.duplicate,
                    model_ms=model_s * 1000,
                    overhead_ms=overhead_ms,
                    published_at=turn.ts,
                    committed_at=time.time(),
                )
            )

    async def _view(self, turn: Turn, token: str, *, fresh: bool) -> tuple[View, bool]:
        """The conversation's snapshot and whether it came from the cache (used unless ``fresh`` or
        for a task event: see orchestrator/snapshots.py)."""
        conv = turn.conversation_id
        if not fresh and turn.event is None:
            cached = self.cache.get(conv, token)
            if cached is not None:
                return cached, True
        return View.of(await self.store.snapshot(conv)), False

    async def _plan(self, turn: Turn, view: View) -> _Plan:
        """Decide the turn against ``view`` and map the decision to ledger ops."""
        snap = view.snapshot
        event_op, refused = event_check(turn, snap)
        if refused is not None:
            return self._recorded(turn, [NoteOp(f"event refused: {refused}")], f"event_refused: {refused}")
        if turn.role is Role.ASSISTANT:
            return self._recorded(turn, [NoteOp("")], "recorded")
        if event_op is not None:
            tasks = task_view(snap, event_op)
        else:
            if view.tasks is None:
                view.tasks = task_view(snap, None)
            tasks = view.tasks
        request = DecisionRequest(
            conversation_id=turn.conversation_id,
            turn_id=turn.turn_id,
            transcript=[*view.chat, ChatMessage(role=turn.role.value, content=turn.transcript_text)],
            tasks=tasks,
            deadline=time.monotonic() + self.decision_timeout,
        )
        started = time.perf_counter()
        try:
            if self._decide_sync is not None:
                decision = self._decide_sync(request)
            else:
                # the deadline is also enforced here: a tier that ignores it cannot stall the lane
                async with asyncio.timeout(self.decision_timeout + 0.05):
                    decision = await self.backend.decide(request)
            intent = validate_intent(decision.intent, [t.id for t in tasks if t.status in ("pending", "running")])
            ops = intent_ops(intent)
        except Exception as exc:
            model_s = time.perf_counter() - started
            kind, detail, path = _failure(exc)
            if kind == "error":
                log.error("router_error", turn_id=turn.turn_id, error=repr(exc), exc_info=exc)
            self.metrics.decided("none", model_s)
            plan = self._failed(turn, event_op, kind, detail, path)
            plan.model_s = model_s
            return plan
        model_s = time.perf_counter() - started
        self.metrics.decided(decision.tier, model_s)
        action = intent.action.value
        latency_ms = round(model_s * 1000, 3)
        path = [_attempt(a) for a in decision.path]
        return _Plan(
            ops=([event_op] if event_op is not None else []) + ops,
            meta=DecisionMeta(
                action=action,
                tier=decision.tier,
                confidence=decision.confidence,
                latency_ms=latency_ms,
                raw=decision.raw or None,
            ),
            event=DecisionEvent(
                conversation_id=turn.conversation_id,
                turn_id=turn.turn_id,
                action=action,
                args=intent.args(),
                tier=decision.tier,
                confidence=decision.confidence,
                latency_ms=latency_ms,
                path=path,
            ),
            model_s=model_s,
            event_op=event_op,
            path=path,
        )

    def _recorded(self, turn: Turn, ops: list[Op], reason: str) -> _Plan:
        """A turn that needs no decision (assistant utterance, refused task event)."""
        return _Plan(
            ops=ops,
            meta=DecisionMeta(action="noop", reason=reason),
            event=_noop_event(turn, reason, []),
            model_s=0.0,
        )

    def _failed(self, turn: Turn, event_op: EventOp | None, kind: str, detail: str, path: list[PathItem]) -> _Plan:
        """The safe fallback: an ``undecided`` noop (the task event still applies)."""
        path = [*path, {"tier": "orchestrator", "outcome": "decision_failed", "latency_ms": None,
                        "confidence": None, "action": "noop", "detail": f"{kind}: {detail}"[:500]}]  # fmt: skip
        return _Plan(
            ops=([event_op] if event_op is not None else []) + [NoteOp("")],
            meta=DecisionMeta(action="noop", reason=UNDECIDED, raw=f"{kind}: {detail}"[:2000]),
            event=_noop_event(turn, UNDECIDED, path),
            model_s=0.0,
            failure=kind,
            event_op=event_op,
            path=path,
        )


def _noop_event(turn: Turn, reason: str, path: list[PathItem]) -> DecisionEvent:
    """The decision event of a turn committed as ``noop`` without a model decision."""
    return DecisionEvent(
        conversation_id=turn.conversation_id,
        turn_id=turn.turn_id,
        action="noop",
        args={},
        tier=None,
        confidence=None,
        latency_ms=None,
        reason=reason,
        path=path,
    )


def _failure(exc: Exception) -> tuple[str, str, list[PathItem]]:
    """Classify a routing failure: (kind, detail, cascade path)."""
    match exc:
        case Undecided():
            return "undecided", exc.reason, [_attempt(a) for a in exc.path]
        case BackendTimeout() | TimeoutError():
            return "timeout", str(exc) or "decision deadline passed", []
        case BackendError():
            return "backend_error", str(exc), []
        case InvalidDecision():
            return "invalid", str(exc), []
        case _:
            return "error", repr(exc), []


class _Commit:
    """The fenced, acknowledged apply of one turn."""

    def __init__(self, store: Coalescer, turn: Turn, lease: Lease, ack: Ack, feed: OutboxFeed | None) -> None:
        self.store = store
        self.turn = turn
        self.token = lease.token
        self.partition = lease.partition
        self.ack = ack
        self.feed = feed
        message = Message(
            role=turn.role.value, content=turn.transcript_text, turn_id=turn.turn_id, task_id=turn.task_id
        )
        self.messages = [message]
        self.sent: list[Message] = []  # the messages of the last apply (what the transcript gained)

    def _messages(self, plan: _Plan) -> list[Message]:
        """The turn, and for a ``reply`` what the assistant says, so later decisions see both."""
        text = plan.event.args.get("text") if plan.event.action == "reply" else None
        if not text:
            return self.messages
        said = Message(role="assistant", content=text, turn_id=f"{self.turn.turn_id}.reply")
        return [*self.messages, said]

    async def apply(self, expected: int | None, plan: _Plan, ops: Sequence[Op] | None = None) -> ApplyResult:
        self.sent = self._messages(plan)
        call = ApplyCall(
            self.turn.conversation_id, expected, self.turn.turn_id, ops or plan.ops, decision=plan.meta,
            messages=self.sent, fencing_token=self.token, ack=self.ack, event=plan.event,
            relay=None if self.feed is None else self.feed.relay,
        )  # fmt: skip
        result = await self.store.apply(call)
        if result.delivered and self.feed is not None:
            # in our relay's pending list already: were this hand-over lost (cancelled just now), its
            # claim of idle entries would still relay them
            self.feed.deliver(self.partition, result.delivered)
        return result

    async def fallback(self, plan: _Plan) -> ApplyResult:
        """Commit whatever the version; if the ledger refuses the task event, commit the note alone."""
        try:
            return await self.apply(None, plan)
        except (UnknownTask, TaskClosed, StaleAttempt, InvalidOp):
            return await self.apply(None, plan, [NoteOp("")])
