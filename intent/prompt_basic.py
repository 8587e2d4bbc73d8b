"""The reference dataset's prompt layout, for ``sraq dataset export --prompt reference``.

One system message with the fixed instructions first and, after a line ``## Ongoing tasks:``, the open
tasks as JSON; the transcript follows as chat messages. The project's own prompt (what the tiers send
at inference) is :mod:`intent.prompt`; this layout exists to write rows in the reference format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from intent.contract import TaskInfo
from intent.dataset import TASKS_MARKER
from intent.prompt import OutputFormat

_INSTRUCTIONS = """\
You decide the next action of a real-time assistant after every turn of a conversation (voice, chat,
WhatsApp, Discord). Background tasks run while the conversation continues; the open ones are listed
below. Choose exactly one action:
- reply: say something now (answer, status from the task list, clarification, result of a completed task).
- start_task: the user asks for new work that takes time and no open task covers it.
- update_task: the user changes or adds details to one OPEN task (name its id).
- cancel_task: the user wants one OPEN task stopped or no longer needs it (name its id).
- noop: nothing to do now (filler, the user is still talking, a progress callback nobody needs, thanks
  after an acknowledgement, talk aimed at someone else).
Only name task ids from the list. Keep texts short and in the assistant's words."""

_FORMATS: dict[str, str] = {
    "call": """\
Answer with one call and nothing else: reply(<text>), start_task(<explanation>),
update_task(<task id>, <what changes>), cancel_task(<task id>, <why>) or noop.""",
    "json": """\
Answer with one JSON object and nothing else: {"action": "<action>", "args": {...}} where args are
{"text"} for reply, {"explanation"} for start_task, {"task_id", "explanation"} for update_task and
cancel_task, and {} for noop.""",
}


def system_prompt(tasks: Sequence[TaskInfo], output_format: OutputFormat = "call") -> str:
    """Instructions, the output format, then the open tasks as JSON after ``## Ongoing tasks:``."""
    listed = [{"id": t.id, "summary": t.summary, "last_update": t.last_update} for t in tasks]
    return (
        f"{_INSTRUCTIONS}\n{_FORMATS[output_format]}\n\n{TASKS_MARKER}\n"
        f"{json.dumps(listed, ensure_ascii=False, indent=None)}"
    )
