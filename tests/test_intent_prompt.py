"""The prompt: a byte-identical fixed prefix, variable part last, both renderings."""

from __future__ import annotations

import re

from intent.contract import TaskInfo
from intent.prompt import (
    HARMONY_PREFILL,
    harmony_prefix,
    instructions,
    parse_rendered,
    render_chat,
    render_harmony,
)
from tests.intent_helpers import OPEN_TASKS, request


def test_fixed_prefix_is_identical_across_requests() -> None:
    a = render_harmony(request("find me a hotel", turn_id="a"))
    b = render_harmony(request("cancel the dinner", tasks=[], turn_id="b"))
    prefix = harmony_prefix("json")
    assert a.startswith(prefix) and b.startswith(prefix)
    assert a.endswith(HARMONY_PREFILL) and b.endswith(HARMONY_PREFILL)
    assert len(prefix) > 0.6 * len(a)  # the cacheable part dominates
    assert render_chat(request("x"))[0]["content"] == render_chat(request("y", tasks=[]))[0]["content"]


def test_fixed_part_has_no_dates_or_ids() -> None:
    for fmt in ("json", "call"):
        fixed = harmony_prefix(fmt)  # type: ignore[arg-type]
        assert not re.search(r"\d{4}-\d{2}-\d{2}", fixed)
        assert "conv-1" not in fixed and "turn-1" not in fixed
        for action in ("reply", "start_task", "update_task", "cancel_task", "noop"):
            assert action in instructions(fmt)  # type: ignore[arg-type]


def test_harmony_layout() -> None:
    text = render_harmony(request("find me a hotel"))
    roles = re.findall(r"<\|start\|>(\w+)", text)
    assert roles == ["system", "developer", "user", "assistant"]
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>")  # no analysis phase
    assert "Reasoning: low" in text


def test_ledger_and_transcript_read_back() -> None:
    req = request("Actually, only direct\nflights")
    tasks, transcript = parse_rendered(render_harmony(req))
    assert [(t.id, t.status) for t in tasks] == [(t.id, t.status) for t in OPEN_TASKS]
    assert [m.role for m in transcript] == ["user", "assistant", "user"]
    assert transcript[-1].content == "Actually, only direct flights"
    chat = render_chat(req)
    assert parse_rendered(chat[1]["content"])[1] == transcript


def test_no_open_task_is_spelled_out() -> None:
    text = render_chat(request("cancel it", tasks=[TaskInfo(id="task-9", summary="x", status="failed")]))[1]["content"]
    assert "task-9 [failed] x" in text and "no open task" in text
