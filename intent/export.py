"""Export examples as chat fine-tuning rows (``{"messages": [...]}``), ready for any LoRA/SFT stack.

Each row is the system prompt (instructions + open tasks), the transcript, and the final assistant
message holding the decision in the chosen output format; the example's reasoning, when present, rides
along as the assistant message's ``thinking``. Loading an exported file with :func:`intent.dataset.load`
gives the same examples back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from intent.dataset import META_FIELDS, Example
from intent.prompt_basic import OutputFormat, system_prompt
from intent.wire import to_call, to_json


def export_row(example: Example, output_format: OutputFormat = "call", *, thinking: bool = True) -> dict[str, Any]:
    """One chat fine-tuning row for ``example``."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(example.tasks, output_format)}]
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
    examples: Iterable[Example], output_format: OutputFormat = "call", *, thinking: bool = True
) -> Iterator[dict[str, Any]]:
    for example in examples:
        yield export_row(example, output_format, thinking=thinking)
