"""Export examples as chat fine-tuning rows (``{"messages": [...]}``), ready for any LoRA/SFT stack.

Two prompt layouts:

* ``project`` (default): the project's own intent prompt (:func:`intent.prompt.render_chat`): a system
  message with the fixed instructions and a user message with the ledger and the transcript, exactly
  what the sglang/openai tiers send at inference, so a model fine-tuned on it sees the same prompt.
* ``reference``: the reference dataset's layout (:mod:`intent.prompt_basic`): one system message with
  the instructions and, after ``## Ongoing tasks:``, the tasks as JSON; then the transcript messages.

Either way the last message is the assistant's decision in the chosen output format (JSON or call
string), with the example's reasoning, when present, as its ``thinking``. :func:`intent.dataset.load`
reads both layouts back (the project layout as the model sees it: the last 12 messages, whitespace
collapsed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

from intent.backend import DecisionRequest
from intent.dataset import META_FIELDS, Example
from intent.prompt import OutputFormat, render_chat
from intent.prompt_basic import system_prompt
from intent.wire import to_call, to_json

PromptLayout = Literal["project", "reference"]


def export_row(
    example: Example, output_format: OutputFormat = "call", *, thinking: bool = True, layout: PromptLayout = "project"
) -> dict[str, Any]:
    """One chat fine-tuning row for ``example``."""
    messages: list[dict[str, Any]]
    if layout == "project":
        request = DecisionRequest(
            conversation_id=example.id, turn_id=example.id, transcript=example.transcript, tasks=example.tasks
        )
        messages = [dict(m) for m in render_chat(request, output_format)]
    else:
        messages = [{"role": "system", "content": system_prompt(example.tasks, output_format)}]
        messages += [{"role": m.role, "content": m.content} for m in example.transcript]
    final = to_json(example.expected) if output_format == "json" else to_call(example.expected)
    answer: dict[str, Any] = {"role": "assistant", "content": final}
    if thinking and example.reasoning:
        answer["thinking"] = example.reasoning
    messages.append(answer)
    row: dict[str, Any] = {"id": example.id, "messages": messages}
    row.update({k: v for k, v in example.meta.items() if k in META_FIELDS})
    return row


def export_rows(
    examples: Iterable[Example],
    output_format: OutputFormat = "call",
    *,
    thinking: bool = True,
    layout: PromptLayout = "project",
) -> Iterator[dict[str, Any]]:
    for example in examples:
        yield export_row(example, output_format, thinking=thinking, layout=layout)
