"""Property test: random op sequences against an in-memory model of the task state machine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from ledger import (
    CancelOp,
    EventOp,
    Keys,
    Ledger,
    LedgerError,
    NoteOp,
    Op,
    StaleAttempt,
    StartOp,
    TaskClosed,
    TaskEvent,
    UnknownTask,
    UpdateOp,
)

OPEN = {"pending", "running"}


@dataclass
class Model:
    """The state machine as the brief states it, independent of the Lua implementation."""

    tasks: dict[str, dict[str, object]] = field(default_factory=dict)
    next_id: int = 1
    version: int = 0

    def apply(self, op: Op) -> type[LedgerError] | None:
        match op:
            case StartOp():
                self.tasks[f"task-{self.next_id}"] = {"status": "pending", "attempt": 1, "version": 1}
                self.next_id += 1
            case NoteOp():
                pass
            case UpdateOp(task_id=tid) | CancelOp(task_id=tid) | EventOp(task_id=tid):
                task = self.tasks.get(tid)
                if task is None:
                    return UnknownTask
                if task["status"] not in OPEN:
                    return TaskClosed
                if isinstance(op, EventOp):
                    if op.attempt < int(task["attempt"]):  # type: ignore[call-overload]
                        return StaleAttempt
                    task["attempt"] = op.attempt
                    task["status"] = {
                        TaskEvent.STARTED: "running",
                        TaskEvent.PROGRESS: "running",
                        TaskEvent.COMPLETED: "completed",
                        TaskEvent.FAILED: "failed",
                    }[op.event]
                elif isinstance(op, CancelOp):
                    task["status"] = "cancelled"
                task["version"] = int(task["version"]) + 1  # type: ignore[call-overload]
        self.version += 1
        return None


task_ids = st.sampled_from([f"task-{i}" for i in range(1, 5)])
ops = st.one_of(
    st.builds(StartOp, st.just("s")),
    st.builds(UpdateOp, task_ids, st.just("u")),
    st.builds(CancelOp, task_ids, st.just("c")),
    st.builds(EventOp, task_ids, st.sampled_from(list(TaskEvent)), st.just("e"), st.integers(1, 3)),
    st.builds(NoteOp, st.just("n")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ops, min_size=1, max_size=25), st.integers(0, 10**9))
def test_ledger_matches_model(redis_url: str, sequence: list[Op], seed: int) -> None:
    async def run() -> None:
        client = Redis.from_url(redis_url)
        ledger = Ledger(client, Keys(prefix=f"prop{seed}", partitions=2))
        model = Model()
        try:
            for i, op in enumerate(sequence):
                expected_error = model.apply(op)
                try:
                    await ledger.apply("c", None, f"t{i}", [op])
                except LedgerError as exc:
                    assert expected_error is not None and isinstance(exc, expected_error), (op, exc)
                else:
                    assert expected_error is None, (op, expected_error)
            snap = await ledger.snapshot("c")
            assert snap.version == model.version
            got = {t.id: {"status": t.status.value, "attempt": t.attempt, "version": t.version} for t in snap.tasks}
            assert got == model.tasks
            trail = await ledger.audit("c")
            assert len(trail) == model.version  # one op per apply here: one audit entry per commit
            async for key in client.scan_iter(match=f"prop{seed}:*"):
                await client.delete(key)
        finally:
            await client.aclose()

    asyncio.run(run())
