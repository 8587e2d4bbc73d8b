"""Dataset loader (both row formats, broken rows), stratified split, export round-trip, dataset CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from intent import Action, CancelTask, ChatMessage, Noop, Reply, StartTask, TaskInfo, UpdateTask
from intent.dataset import Example, load
from intent.export import PromptLayout, export_rows
from intent.prompt import OutputFormat, instructions
from intent.splits import dataset_stats, stratified_folds, stratified_split

TASKS = [
    {"id": "task-4", "summary": "Book a hotel in Porto for 12-14 June", "last_update": "Shortlisted 3 hotels"},
    {"id": "task-9", "summary": "Find train Lisbon -> Porto on 12 June morning", "last_update": "started"},
]
FULL = {
    "id": "travel-017",
    "domain": "travel",
    "style": "urgent",
    "channel": "voice",
    "tasks": TASKS,
    "messages": [
        {"role": "user", "content": "uh can you book the train"},
        {"role": "assistant", "content": "On it."},
        {"role": "tool", "content": "[task-9 progress] Found 2 options: 07:09, 08:09"},
        {"role": "user", "content": "make it the earliest one, the seven something"},
    ],
    "final": "update_task(task-9, Pick the 07:09 train (earliest), arriving 09:58)",
    "reasoning": "User narrows the train search.",
}
FINETUNE = {
    "messages": [
        {
            "role": "system",
            "content": "You decide the next action.\nRules...\n\n## Ongoing tasks:\n" + json.dumps(TASKS),
        },
        {"role": "user", "content": "forget the hotel, my cousin has a spare room"},
        {"role": "assistant", "content": "cancel_task(task-4, User will stay with a cousin)", "thinking": "Hotel."},
    ]
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def test_full_row(tmp_path: Path) -> None:
    res = load(write_jsonl(tmp_path / "d.jsonl", [FULL]))
    assert res.ok and len(res.examples) == 1
    ex = res.examples[0]
    assert ex.id == "travel-017" and ex.line == 1
    assert ex.expected == UpdateTask("task-9", "Pick the 07:09 train (earliest), arriving 09:58")
    assert [t.id for t in ex.tasks] == ["task-4", "task-9"]
    assert ex.tasks[1] == TaskInfo(id="task-9", summary=TASKS[1]["summary"], last_update="started")
    assert [m.role for m in ex.transcript] == ["user", "assistant", "tool", "user"]
    assert ex.reasoning == "User narrows the train search."
    assert ex.meta == {"domain": "travel", "style": "urgent", "channel": "voice", "format": "full"}


def test_full_row_user_field_and_system_message(tmp_path: Path) -> None:
    row = {
        "tasks": [],
        "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
        "user": "what can you do?",
        "final": "reply(I can run errands for you.)",
    }
    ex = load(write_jsonl(tmp_path / "d.jsonl", [row])).examples[0]
    assert ex.transcript == (
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="user", content="what can you do?"),
    )
    assert ex.id == "d:1" and ex.reasoning is None
    # the same message given both ways is not duplicated
    row2 = dict(row, user="hi")
    assert len(load(write_jsonl(tmp_path / "e.jsonl", [row2])).examples[0].transcript) == 1


def test_finetune_row(tmp_path: Path) -> None:
    res = load(write_jsonl(tmp_path / "ft.jsonl", [FINETUNE]))
    assert res.ok
    ex = res.examples[0]
    assert ex.expected == CancelTask("task-4", "User will stay with a cousin")
    assert ex.reasoning == "Hotel."
    assert ex.transcript == (ChatMessage(role="user", content="forget the hotel, my cousin has a spare room"),)
    assert [t.id for t in ex.tasks] == ["task-4", "task-9"] and ex.tasks[0].last_update == "Shortlisted 3 hotels"
    assert ex.meta["format"] == "messages"


def test_finetune_row_variants(tmp_path: Path) -> None:
    system = "Instructions.\n## Ongoing tasks:\n"
    rows = [
        {"messages": [{"role": "system", "content": system + "[]"}, {"role": "user", "content": "hey"},
                      {"role": "assistant", "content": "reply(Hi!)"}]},
        {"messages": [{"role": "system", "content": system + '{"task-3": "Order printer paper"}\nEnd.'},
                      {"role": "user", "content": "mm-hmm"}, {"role": "assistant", "content": "noop"}]},
        {"messages": [{"role": "system", "content": system + "[]"}, {"role": "user", "content": "book a cab"},
                      {"role": "assistant", "content": '{"action": "start_task", "args": {"explanation": "Cab"}}'}]},
    ]  # fmt: skip
    res = load(write_jsonl(tmp_path / "ft.jsonl", rows))
    assert res.ok, res.issues
    assert [ex.expected for ex in res.examples] == [Reply("Hi!"), Noop(), StartTask("Cab")]
    assert res.examples[1].tasks == (TaskInfo(id="task-3", summary="Order printer paper"),)


def test_broken_rows_are_reported_with_line_and_reason(tmp_path: Path) -> None:
    sys_msg = {"role": "system", "content": "no marker here"}
    rows: list[object] = [
        FULL,  # line 1: fine
        "{not json",  # 2
        dict(FULL, final="update_task(task-77, Something)"),  # 3: task not in the ledger
        dict(FULL, final="frobnicate(x)"),  # 4: unknown action
        {"messages": [sys_msg, {"role": "user", "content": "x"}, {"role": "assistant", "content": "noop"}]},  # 5
        {"messages": [{"role": "system", "content": "## Ongoing tasks:\n[]"}, {"role": "user", "content": "x"}]},  # 6
        dict(FULL, messages=[]),  # 7: empty transcript
        [1, 2],  # 8: not an object
        {"tasks": []},  # 9: neither format
        dict(FULL, tasks=[{"id": "task-4", "summary": "a"}, {"id": "task-4", "summary": "b"}], final="noop"),  # 10
        dict(FULL, messages=[{"role": "robot", "content": "beep"}]),  # 11: unknown role
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with path.open("a") as fh:
        fh.write("\n")  # a blank line is not a row
    res = load(path)
    assert len(res.examples) == 1
    reasons = {i.line: i.reason for i in res.issues}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "not JSON" in reasons[2]
    assert "task-77" in reasons[3] and "not an open task" in reasons[3]
    assert "unknown action" in reasons[4]
    assert "Ongoing tasks" in reasons[5]
    assert "last message" in reasons[6]
    assert "empty transcript" in reasons[7]
    assert "JSON object" in reasons[8]
    assert "neither" in reasons[9]
    assert "duplicate task ids" in reasons[10]
    assert "unknown role" in reasons[11]
    assert str(res.issues[0]).startswith(f"{path}:2: ")


def _examples(n_per_action: int) -> list[Example]:
    intents = [Reply("ok"), StartTask("x"), UpdateTask("task-1", "y"), CancelTask("task-1", "z"), Noop()]
    tasks = (TaskInfo(id="task-1", summary="s"), TaskInfo(id="task-2", summary="t"))
    return [
        Example(id=f"r-{a}-{i:03d}", transcript=(ChatMessage(role="user", content=f"m{a}{i}"),), tasks=tasks,
                expected=intent)
        for a, intent in enumerate(intents)
        for i in range(n_per_action)
    ]  # fmt: skip


def test_stratified_split_is_balanced_disjoint_and_deterministic() -> None:
    examples = _examples(41)
    train, test = stratified_split(examples, 0.2, seed=7)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(len(examples)))
    assert Counter(examples[i].action for i in test) == {a.value: 8 for a in Action}
    assert Counter(examples[i].action for i in train) == {a.value: 33 for a in Action}
    assert stratified_split(examples, 0.2, seed=7) == (train, test)
    # file order does not matter, only ids and seed
    shuffled = examples[::-1]
    _, test_rev = stratified_split(shuffled, 0.2, seed=7)
    assert {shuffled[i].id for i in test_rev} == {examples[i].id for i in test}
    assert stratified_split(examples, 0.2, seed=8)[1] != test
    folds = stratified_folds([ex.action for ex in examples], 5)
    for action in Action:
        per_fold = Counter(f for f, ex in zip(folds, examples, strict=True) if ex.action == action.value)
        assert max(per_fold.values()) - min(per_fold.values()) <= 1


@pytest.mark.parametrize("layout", ["project", "reference"])
@pytest.mark.parametrize("output_format", ["call", "json"])
def test_export_round_trip(tmp_path: Path, output_format: str, layout: str) -> None:
    src = load(write_jsonl(tmp_path / "src.jsonl", [FULL, FINETUNE, dict(FULL, id="x-2", reasoning=None)]))
    out = tmp_path / "out.jsonl"
    fmt: OutputFormat = "json" if output_format == "json" else "call"
    lay: PromptLayout = "project" if layout == "project" else "reference"
    out.write_text("".join(json.dumps(r) + "\n" for r in export_rows(src.examples, fmt, layout=lay)), "utf-8")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) >= {"id", "messages"} and "final" not in r and "tasks" not in r for r in rows)
    first = rows[0]["messages"]
    assert first[0]["role"] == "system"
    if layout == "reference":
        assert "## Ongoing tasks:" in first[0]["content"] and len(first) == 2 + len(FULL["messages"])
    else:  # the tiers' own prompt: fixed instructions, then ledger + transcript in one user message
        assert first[0]["content"] == instructions(fmt) and [m["role"] for m in first] == [
            "system",
            "user",
            "assistant",
        ]
        assert "task-9 [running] Find train Lisbon -> Porto" in first[1]["content"]
    assert rows[0]["messages"][-1]["thinking"] == FULL["reasoning"]
    assert "thinking" not in rows[2]["messages"][-1]
    final = rows[0]["messages"][-1]["content"]
    assert final.startswith("{") if fmt == "json" else final.startswith("update_task(task-9, ")
    back = load(out)
    assert back.ok, back.issues
    for a, b in zip(src.examples, back.examples, strict=True):
        assert (a.transcript, a.tasks, a.expected, a.reasoning) == (b.transcript, b.tasks, b.expected, b.reasoning)
    assert back.examples[0].id == "travel-017" and back.examples[0].meta["domain"] == "travel"


def test_stats() -> None:
    stats = dataset_stats(_examples(3))
    assert stats["rows"] == 15 and stats["actions"] == {a.value: 3 for a in Action}
    assert stats["task_not_first_fraction"] == 0.0 and stats["multi_turn_fraction"] == 0.0


def _sraq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip


def test_dataset_cli(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [dict(FULL, id=f"t-{i}", final=f) for i, f in enumerate(
        ["noop", "reply(Yes.)", "start_task(Book it)", "update_task(task-4, Cheaper)", "cancel_task(task-9, Done)"] * 4
    )])  # fmt: skip
    bad = write_jsonl(tmp_path / "bad.jsonl", [FULL, "{oops", dict(FULL, final="cancel_task(task-1, x)")])
    res = _sraq("dataset", "validate", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert f"{bad}:2: not JSON" in res.stdout and f"{bad}:3: final cancel_task names 'task-1'" in res.stdout
    res = _sraq("dataset", "validate", "--json", str(good), cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["valid"] == 20
    res = _sraq("dataset", "split", str(bad), cwd=tmp_path)
    assert res.returncode == 2 and "2 invalid row(s)" in res.stderr
    res = _sraq("dataset", "split", str(good), "--json", "--test-fraction", "0.25", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["train"]["rows"] == 15 and out["test"]["rows"] == 5
    assert out["test"]["actions"] == {a: 1 for a in sorted(x.value for x in Action)}
    train_lines = (tmp_path / "data/train.jsonl").read_text().splitlines()
    assert all(line in good.read_text() for line in train_lines)  # copied verbatim
    res = _sraq("dataset", "export", "data/test.jsonl", "-o", "ft.jsonl", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(load(tmp_path / "ft.jsonl").examples) == 5
    res = _sraq("dataset", "stats", "--json", str(good), cwd=tmp_path)
    assert json.loads(res.stdout)["actions"]["noop"] == 4
