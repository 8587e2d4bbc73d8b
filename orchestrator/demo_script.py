"""The scripted conversations ``sraq demo`` plays, and the ledger state each must end in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Say:
    """Publish a user turn and wait for its decision. ``expect`` is the action the script intends."""

    text: str
    expect: str
    channel: str = "chat"
    task: str | None = None  # the task update/cancel must name


@dataclass(frozen=True)
class WaitTask:
    """Wait until ``task_id`` reaches one of ``statuses`` (driven by the workers' task events)."""

    task_id: str
    statuses: tuple[str, ...]


Step = Say | WaitTask


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    steps: tuple[Step, ...]
    #: task id -> final status the ledger must show when the demo ends
    expected: dict[str, str] = field(default_factory=dict)


RUNNING = ("running",)
DONE = ("completed",)


def conversations(run_id: str) -> list[Conversation]:
    """Three conversations played at once: tasks started, updated while running, cancelled, completed;
    a status question answered while tasks run; task callbacks that mostly lead to ``noop``."""
    return [
        Conversation(
            id=f"demo-{run_id}-trip",
            title="travel (voice)",
            steps=(
                Say("hello, what can you do for me?", "reply", "voice"),
                Say("can you find me flights from Lisbon to Berlin for next Friday", "start_task", "voice"),
                Say("and also look for a hotel near Alexanderplatz for two nights", "start_task", "voice"),
                WaitTask("task-1", RUNNING),
                Say("actually change the flight search to Saturday morning instead", "update_task", "voice", "task-1"),
                Say("how is the flight search going?", "reply", "voice"),
                WaitTask("task-1", DONE),
                WaitTask("task-2", DONE),
            ),
            expected={"task-1": "completed", "task-2": "completed"},
        ),
        Conversation(
            id=f"demo-{run_id}-hiring",
            title="recruiting (chat)",
            steps=(
                Say("please start screening applicants for the senior backend engineer role", "start_task"),
                Say("also draft a job post for the product designer opening", "start_task"),
                WaitTask("task-2", RUNNING),
                Say("forget the designer job post, we filled that position internally", "cancel_task", task="task-2"),
                WaitTask("task-1", DONE),
            ),
            expected={"task-1": "completed", "task-2": "cancelled"},
        ),
        Conversation(
            id=f"demo-{run_id}-office",
            title="office errands (whatsapp)",
            steps=(
                Say("order two new toner cartridges for the office printer", "start_task", "whatsapp"),
                Say("um hold on", "noop", "whatsapp"),
                Say("and book a meeting room for the team offsite on the 14th", "start_task", "whatsapp"),
                WaitTask("task-1", DONE),
                WaitTask("task-2", DONE),
            ),
            expected={"task-1": "completed", "task-2": "completed"},
        ),
    ]
