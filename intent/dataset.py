"""Labelled decision examples: one :class:`Example` type read from both reference row formats.

* **Full rows**: ``tasks`` (``id``, ``summary``, ``last_update``), ``messages`` (roles system/user/
  assistant/tool), ``final`` (the call string, or the JSON wire format), optional ``user`` and
  ``reasoning``; the project's authored rows add ``id``, ``domain``, ``style`` and ``channel``.
* **Fine-tuning rows** with only ``messages``: the first system message holds the instructions and,
  after a line ``## Ongoing tasks:``, the tasks as JSON; the last assistant message is the final
  decision (its ``thinking`` field, when present, is the reasoning).

Nothing is dropped silently: every line that does not parse, or whose final names a task that is not
in the row's ledger, comes back as a :class:`RowIssue` with its line number and reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from intent.contract import ChatMessage, Intent, TaskInfo, validate
from intent.errors import InvalidDecision
from intent.prompt import OPEN_STATUSES, parse_rendered
from intent.wire import parse_any, to_call

#: The line of a fine-tuning row's system message after which the ledger tasks follow as JSON.
TASKS_MARKER = "## Ongoing tasks:"
#: Roles a transcript message may have (system messages are the prompt, not the conversation).
TRANSCRIPT_ROLES = frozenset({"user", "assistant", "tool"})
#: Row fields that carry metadata (kept in ``Example.meta``).
META_FIELDS = ("domain", "style", "channel")


class Example(msgspec.Struct, frozen=True, kw_only=True):
    """One labelled decision: the transcript and open tasks it was made on, and the right intent."""

    id: str
    transcript: tuple[ChatMessage, ...]
    tasks: tuple[TaskInfo, ...]
    expected: Intent
    reasoning: str | None = None
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    line: int = 0
    source: str = ""

    @property
    def action(self) -> str:
        return self.expected.action.value

    @property
    def last_message(self) -> ChatMessage:
        return self.transcript[-1]


class RowIssue(msgspec.Struct, frozen=True):
    """A row that could not become an example (or a warning about one that did)."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class LoadResult(msgspec.Struct, frozen=True):
    """The examples of one or more files, the issues found, and each example's original line text."""

    examples: list[Example]
    issues: list[RowIssue]
    raw_lines: list[str]

    @property
    def ok(self) -> bool:
        return not self.issues


class RowError(ValueError):
    """Why one row is not a valid example (internal; surfaces as a RowIssue)."""


def load(paths: Path | str | Sequence[Path | str]) -> LoadResult:
    """Read JSONL files in either row format; blank lines are skipped, everything else is accounted for."""
    if isinstance(paths, str | Path):
        paths = [paths]
    examples: list[Example] = []
    issues: list[RowIssue] = []
    raws: list[str] = []
    for path in map(Path, paths):
        source = str(path)
        with path.open(encoding="utf-8") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    issues.append(RowIssue(source, number, f"not JSON: {exc.msg} at column {exc.colno}"))
                    continue
                try:
                    example = parse_row(obj, line=number, source=source)
                except RowError as exc:
                    issues.append(RowIssue(source, number, str(exc)))
                    continue
                examples.append(example)
                raws.append(text.rstrip("\n"))
    return LoadResult(examples, issues, raws)


def parse_row(obj: object, *, line: int = 0, source: str = "") -> Example:
    """Turn one decoded JSON row (either format) into an Example; raises RowError with the reason."""
    if not isinstance(obj, dict):
        raise RowError(f"row must be a JSON object, got {type(obj).__name__}")
    if "final" in obj:
        example = _parse_full(obj, line, source)
    elif "messages" in obj:
        example = _parse_finetune(obj, line, source)
    else:
        raise RowError("neither a full row (no 'final') nor a fine-tuning row (no 'messages')")
    try:
        validate(example.expected, [t.id for t in example.tasks if t.status in OPEN_STATUSES])
    except InvalidDecision as exc:
        raise RowError(f"final {exc.reason}") from None
    return example


def _parse_full(obj: dict[str, Any], line: int, source: str) -> Example:
    tasks = _tasks(obj.get("tasks", []))
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise RowError("'messages' must be a list")
    transcript = [m for m in _messages(messages) if m.role != "system"]
    user = obj.get("user")
    meta = _meta(obj)
    match user:
        case None:
            pass
        case str() if user.strip():
            # the latest user message given beside the history; append it unless it is already last
            if not transcript or transcript[-1] != ChatMessage(role="user", content=user):
                transcript.append(ChatMessage(role="user", content=user))
        case _:
            meta["user"] = json.dumps(user, ensure_ascii=False, sort_keys=True)
    final = obj["final"]
    if not isinstance(final, str):
        raise RowError("'final' must be a string")
    return _example(obj, transcript, tasks, final, obj.get("reasoning"), meta | {"format": "full"}, line, source)


def _parse_finetune(obj: dict[str, Any], line: int, source: str) -> Example:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' must be a non-empty list")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise RowError("the last message of a fine-tuning row must be the assistant's final decision")
    final = last.get("content")
    if not isinstance(final, str):
        raise RowError("the final assistant message has no text content")
    thinking = last.get("thinking") or last.get("reasoning_content") or obj.get("reasoning")
    history = messages[:-1]
    system = next((m for m in history if isinstance(m, dict) and m.get("role") == "system"), None)
    system_text = system.get("content") if system is not None else None
    rendered = next((m["content"] for m in history if _is_rendered_prompt(m)), None)
    if isinstance(system_text, str) and TASKS_MARKER in system_text:
        tasks = _tasks_from_system(system_text)
        transcript = [m for m in _messages(history) if m.role != "system"]
    elif rendered is not None:
        # the project's own prompt (intent.prompt): ledger and transcript rendered in one message
        tasks, transcript = parse_rendered(rendered)
    else:
        raise RowError(
            f"fine-tuning row has neither a system message with a '{TASKS_MARKER}' line "
            "nor a rendered '## Ledger' / '## Transcript' prompt"
        )
    meta = _meta(obj) | {"format": "messages"}
    return _example(obj, transcript, tasks, final, thinking, meta, line, source)


def _is_rendered_prompt(message: object) -> bool:
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return False
    content: str = message["content"]
    return "## Ledger" in content and "## Transcript" in content


def _example(
    obj: dict[str, Any],
    transcript: list[ChatMessage],
    tasks: list[TaskInfo],
    final: str,
    reasoning: object,
    meta: dict[str, str],
    line: int,
    source: str,
) -> Example:
    if not transcript:
        raise RowError("empty transcript: nothing to decide on")
    try:
        expected = parse_any(final)
    except InvalidDecision as exc:
        raise RowError(f"final does not parse: {exc.reason}") from None
    if reasoning is not None and not isinstance(reasoning, str):
        raise RowError("'reasoning'/'thinking' must be a string")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise RowError(f"duplicate task ids in the ledger: {ids}")
    row_id = obj.get("id")
    return Example(
        id=str(row_id) if row_id is not None else f"{Path(source).stem or 'row'}:{line}",
        transcript=tuple(transcript),
        tasks=tuple(tasks),
        expected=expected,
        reasoning=reasoning or None,
        meta=meta,
        line=line,
        source=source,
    )


def _meta(obj: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(obj[k]) for k in META_FIELDS if obj.get(k) is not None}


def _messages(raw: Iterable[object]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in TRANSCRIPT_ROLES and role != "system":
            raise RowError(f"message {i} has unknown role {role!r}")
        if not isinstance(content, str):
            raise RowError(f"message {i} ({role}) has no text content")
        out.append(ChatMessage(role=role, content=content))
    return out


def _tasks(raw: object) -> list[TaskInfo]:
    """Tasks as a list of objects, or a mapping id -> summary / id -> object."""
    items: list[tuple[object, object]]
    match raw:
        case None:
            return []
        case list():
            items = [(None, t) for t in raw]
        case dict():
            items = list(raw.items())
        case _:
            raise RowError(f"'tasks' must be a list, got {type(raw).__name__}")
    tasks: list[TaskInfo] = []
    for key, t in items:
        match t:
            case str() if key is not None:
                tasks.append(TaskInfo(id=str(key), summary=t))
            case dict():
                task_id = t.get("id", key)
                summary = t.get("summary", t.get("description"))
                if not isinstance(task_id, str) or not task_id.strip():
                    raise RowError(f"task without an id: {json.dumps(t)[:80]}")
                if not isinstance(summary, str):
                    raise RowError(f"task {task_id} has no summary")
                last_update = t.get("last_update") or ""
                status = t.get("status") or "running"
                tasks.append(
                    TaskInfo(id=task_id.strip(), summary=summary, last_update=str(last_update), status=str(status))
                )
            case _:
                raise RowError(f"bad task entry: {json.dumps(t)[:80]}")
    return tasks


def _tasks_from_system(content: object) -> list[TaskInfo]:
    if not isinstance(content, str):
        raise RowError("system message has no text content")
    _head, marker, rest = content.partition(TASKS_MARKER)
    if not marker:
        raise RowError(f"system message has no '{TASKS_MARKER}' line")
    rest = rest.strip()
    if not rest or rest.lower().startswith(("none", "(none)", "no ongoing", "no tasks")):
        return []
    try:
        value, _ = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        raise RowError(f"tasks after '{TASKS_MARKER}' are not JSON: {exc.msg}") from None
    return _tasks(value)


def to_row(example: Example, *, final: str | None = None) -> dict[str, Any]:
    """The example as a full row (authored-data format), e.g. to write a normalised split."""
    row: dict[str, Any] = {"id": example.id}
    row.update({k: v for k, v in example.meta.items() if k in META_FIELDS})
    row["tasks"] = [{"id": t.id, "summary": t.summary, "last_update": t.last_update} for t in example.tasks]
    row["messages"] = [{"role": m.role, "content": m.content} for m in example.transcript]
    row["final"] = final if final is not None else to_call(example.expected)
    if example.reasoning:
        row["reasoning"] = example.reasoning
    return row
