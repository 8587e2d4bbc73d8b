"""sraq's own intent prompt, in two renderings: harmony (gpt-oss, native ``/generate``) and chat messages.

Layout for the server's prefix cache: the long fixed instructions come first and are byte-identical
across requests (no dates, no ids, nothing per conversation); the ledger and the transcript come
last. The fixed part depends only on the output format (``json`` for a JSON-Schema-constrained
decision, ``call`` for the EBNF-constrained call string), so each deployment has exactly one fixed
prefix.

The harmony rendering ends with ``<|start|>assistant<|channel|>final<|message|>``: the assistant turn is
prefilled up to the final channel, so a gpt-oss model answers with the decision directly and never
opens a reasoning (analysis) phase. This also sidesteps SGLang issue #9259 (grammar + reasoning
parser on the OpenAI-compatible route).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from intent.backend import DecisionRequest
from intent.contract import ChatMessage, TaskInfo

OutputFormat = Literal["json", "call"]

#: Transcript messages shown to the model (the most recent ones).
DEFAULT_TRANSCRIPT_LIMIT = 12
#: Closed tasks shown for context (the most recent ones); open tasks are always all shown.
CLOSED_TASKS_SHOWN = 5
OPEN_STATUSES = frozenset({"pending", "running"})

INSTRUCTIONS = """\
You route the turns of a real-time conversation between a user and an assistant. The assistant \
can talk, and it can run background tasks (searches, bookings, reminders, research) that take \
seconds to minutes while the conversation keeps going. For the LAST turn of the transcript you \
choose exactly one action. You do not answer the user at length and you do not do the work \
yourself: you decide what happens next, quickly.

The five actions:
- reply: answer the user directly, now. Use it for greetings, small talk, questions about the \
conversation or about the tasks shown in the ledger (their status and last update are right \
there), and anything that needs no background work. Argument: text, the short reply.
- start_task: open a NEW background task. Use it when the user asks for work that needs tools, \
lookups or time and that no open task already covers. Argument: explanation, one self-contained \
sentence a worker can act on without reading the transcript.
- update_task: change an OPEN task: new constraints, a correction, extra details, a new priority. \
Use it when the turn refines work already in progress instead of asking for something new. \
Arguments: task_id (an open task of the ledger) and explanation (what changes).
- cancel_task: stop an OPEN task because the user no longer wants it, solved it, or replaced it. \
Arguments: task_id (an open task of the ledger) and explanation (why).
- noop: do nothing. Use it for acknowledgements, fillers, turns that are not addressed to the \
assistant, and task events that need no reaction. No arguments.

How to read the ledger:
- Each line is one task: its id, its status in brackets, its summary and its last update.
- Status pending or running means the task is open; only open tasks can be updated or cancelled.
- completed, failed and cancelled tasks are closed and final. A request to change a closed task is \
a new task (start_task), or a reply when it was only a question.
- Never invent a task id. When two open tasks could match, pick the one the user refers to by \
its subject; when unsure, prefer the most recent one.
- Turns with the role tool are events from running tasks (progress, results, failures). React to \
them only when the user should hear about it now (reply); otherwise noop.

Rules:
- One action per turn. When the turn both asks a question and asks for work, the work wins.
- A correction of a running task is update_task, never a second start_task for the same thing.
- Keep text and explanations short, factual and in the user's language.
"""

_FORMAT_JSON = """\
Output format: a single JSON object and nothing else, for example
{"action": "update_task", "args": {"task_id": "task-3", "explanation": "Only direct flights."}}
{"action": "noop", "args": {}}
"""

_FORMAT_CALL = """\
Output format: a single call on one line and nothing else, for example
update_task(task-3, Only direct flights.)
start_task(Find a table for two tonight near the office.)
noop
"""

_HARMONY_SYSTEM = (
    "<|start|>system<|message|>You are a fast intent router for a real-time assistant.\n\n"
    "Reasoning: low\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
)


def instructions(fmt: OutputFormat = "json") -> str:
    """The fixed instructions for one output format (byte-identical for every request)."""
    return INSTRUCTIONS + "\n" + (_FORMAT_JSON if fmt == "json" else _FORMAT_CALL)


def harmony_prefix(fmt: OutputFormat = "json") -> str:
    """The fixed, cacheable start of every harmony prompt (system + developer messages)."""
    return f"{_HARMONY_SYSTEM}<|start|>developer<|message|># Instructions\n\n{instructions(fmt)}<|end|>"


#: The assistant turn, prefilled up to the final channel (no analysis phase).
HARMONY_PREFILL = "<|start|>assistant<|channel|>final<|message|>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_ledger(tasks: Sequence[TaskInfo]) -> str:
    """The ledger section: every open task, then the most recent closed ones."""
    open_tasks = [t for t in tasks if t.status in OPEN_STATUSES]
    closed = [t for t in tasks if t.status not in OPEN_STATUSES][-CLOSED_TASKS_SHOWN:]
    lines = ["## Ledger"]
    if not open_tasks and not closed:
        lines.append("(no tasks)")
    for task in [*open_tasks, *closed]:
        line = f"{task.id} [{task.status}] {_one_line(task.summary)}"
        if task.last_update:
            line += f" | last update: {_one_line(task.last_update)}"
        lines.append(line)
    if not open_tasks:
        lines.append("(no open task: update_task and cancel_task are not possible)")
    return "\n".join(lines)


def render_transcript(transcript: Sequence[ChatMessage], limit: int = DEFAULT_TRANSCRIPT_LIMIT) -> str:
    """The transcript section, oldest first, one message per line (``role: text``)."""
    shown = list(transcript)[-limit:] if limit > 0 else []
    lines = ["## Transcript (oldest first; decide for the last turn)"]
    if len(transcript) > len(shown):
        lines.append(f"({len(transcript) - len(shown)} earlier messages omitted)")
    lines.extend(f"{m.role}: {_one_line(m.content)}" for m in shown)
    if not shown:
        lines.append("(empty)")
    return "\n".join(lines)


def variable_part(request: DecisionRequest, limit: int = DEFAULT_TRANSCRIPT_LIMIT) -> str:
    """Ledger then transcript: everything that changes between requests."""
    return f"{render_ledger(request.tasks)}\n\n{render_transcript(request.transcript, limit)}"


def render_harmony(request: DecisionRequest, fmt: OutputFormat = "json", limit: int = DEFAULT_TRANSCRIPT_LIMIT) -> str:
    """The full harmony prompt text for ``/generate``, ending in the final-channel prefill."""
    user = f"<|start|>user<|message|>{variable_part(request, limit)}<|end|>"
    return harmony_prefix(fmt) + user + HARMONY_PREFILL


def render_chat(
    request: DecisionRequest, fmt: OutputFormat = "json", limit: int = DEFAULT_TRANSCRIPT_LIMIT
) -> list[dict[str, str]]:
    """Chat messages for an OpenAI-compatible ``/v1/chat/completions`` server."""
    return [
        {"role": "system", "content": instructions(fmt)},
        {"role": "user", "content": variable_part(request, limit)},
    ]


def parse_rendered(prompt_text: str) -> tuple[list[TaskInfo], list[ChatMessage]]:
    """Read back a rendered prompt: (ledger tasks, transcript as shown).

    Only the stand-in server uses this (its brain sees what a model would see); it understands both
    renderings because it only looks at the variable part.
    """
    body = prompt_text.rpartition("## Ledger")[2]
    ledger_text, _, transcript_text = body.partition("## Transcript")
    tasks: list[TaskInfo] = []
    for line in ledger_text.splitlines():
        head, sep, rest = line.partition(" [")
        if not sep or " " in head or "] " not in rest:
            continue
        status, _, tail = rest.partition("] ")
        summary, _, update = tail.partition(" | last update: ")
        tasks.append(TaskInfo(id=head, status=status, summary=summary, last_update=update))
    transcript: list[ChatMessage] = []
    for line in transcript_text.split("<|end|>")[0].splitlines()[1:]:
        role, sep, text = line.partition(": ")
        if sep and role and " " not in role and not role.startswith("("):
            transcript.append(ChatMessage(role=role, content=text.strip()))
    return tasks, transcript
