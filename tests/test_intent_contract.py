"""The intent contract: both wire formats, tricky call strings, validation, constraint builders."""

from __future__ import annotations

import contextlib
import json
import re

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent import (
    Action,
    CancelTask,
    InvalidDecision,
    Noop,
    Reply,
    StartTask,
    UpdateTask,
    ebnf,
    json_schema,
    parse_any,
    parse_call,
    parse_json,
    to_call,
    to_json,
    validate,
)

INTENTS = [
    Reply("Sure, it's still running."),
    StartTask("Find flights to Porto, June 12"),
    UpdateTask("task-32", "Only direct flights"),
    CancelTask("task-8", "User booked it themselves"),
    Noop(),
]


@pytest.mark.parametrize("intent", INTENTS)
def test_round_trip_both_formats(intent: object) -> None:
    assert parse_json(to_json(intent)) == intent  # type: ignore[arg-type]
    assert parse_call(to_call(intent)) == intent  # type: ignore[arg-type]
    assert parse_any(to_json(intent)) == intent  # type: ignore[arg-type]
    assert parse_any(to_call(intent)) == intent  # type: ignore[arg-type]


def test_json_format_shape() -> None:
    assert json.loads(to_json(UpdateTask("task-32", "x"))) == {
        "action": "update_task",
        "args": {"task_id": "task-32", "explanation": "x"},
    }
    assert json.loads(to_json(Noop())) == {"action": "noop", "args": {}}
    assert parse_json('{"action": "noop"}') == Noop()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "update_task(task-32, Move it to Friday, 3pm (not 4))",
            UpdateTask("task-32", "Move it to Friday, 3pm (not 4)"),
        ),
        ("update_task( task-3 ,  spaced )", UpdateTask("task-3", "spaced")),
        (
            'cancel_task(task-8, He said "stop it", so stop)',
            CancelTask("task-8", 'He said "stop it", so stop'),
        ),
        ("reply(Line one\nline two, with (parens))", Reply("Line one\nline two, with (parens)")),
        (
            "  start_task(Book a table for 4; 'outdoor' if possible)  \n",
            StartTask("Book a table for 4; 'outdoor' if possible"),
        ),
        ("reply(a))", Reply("a)")),
        ("noop", Noop()),
        ("noop()", Noop()),
    ],
)
def test_tricky_call_strings(raw: str, expected: object) -> None:
    assert parse_call(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "hello",
        "reply(unclosed",
        "dance(now)",
        "update_task(task-3)",
        "update_task(, text)",
        "noop(something)",
        "noop please",
        "reply",
    ],
)
def test_malformed_call_strings(raw: str) -> None:
    with pytest.raises(InvalidDecision) as err:
        parse_call(raw)
    assert err.value.reason


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "[]",
        '{"action": "dance", "args": {}}',
        '{"action": "reply", "args": {"text": 3}}',
        '{"action": "reply", "args": {"text": "a", "extra": "b"}}',
        '{"action": "reply", "args": {}}',
        '{"action": "reply", "args": {"text": "a"}, "confidence": 1}',
        '{"action": "update_task", "args": {"explanation": "x"}}',
        '{"action": "noop", "args": {"text": "x"}}',
        b"\xff\xfe",
    ],
)
def test_malformed_json(raw: str | bytes) -> None:
    with pytest.raises(InvalidDecision):
        parse_json(raw)


@given(st.text())
def test_parse_never_raises_untyped(raw: str) -> None:
    for parse in (parse_call, parse_json, parse_any):
        with contextlib.suppress(InvalidDecision):
            parse(raw)


@given(
    st.sampled_from(list(Action)),
    st.text(min_size=1).filter(lambda s: s.strip() == s and "\r" not in s),
    st.from_regex(r"task-[0-9]{1,4}", fullmatch=True),
)
def test_call_round_trip_property(action: Action, text: str, task_id: str) -> None:
    intent = {
        Action.REPLY: Reply(text),
        Action.START_TASK: StartTask(text),
        Action.UPDATE_TASK: UpdateTask(task_id, text),
        Action.CANCEL_TASK: CancelTask(task_id, text),
        Action.NOOP: Noop(),
    }[action]
    assert parse_call(to_call(intent)) == intent
    assert parse_json(to_json(intent)) == intent


def test_validate_against_open_tasks() -> None:
    assert validate(UpdateTask("task-2", "x"), ["task-1", "task-2"]) == UpdateTask("task-2", "x")
    assert validate(Reply("x"), []) == Reply("x")
    with pytest.raises(InvalidDecision, match="not an open task"):
        validate(CancelTask("task-9", "x"), ["task-1", "task-2"])
    with pytest.raises(InvalidDecision):
        validate(UpdateTask("task-1", "x"), [])


def test_json_schema_enforces_open_task_ids() -> None:
    schema = json.loads(json_schema(["task-3", "task-7"]))
    jsonschema.Draft202012Validator.check_schema(schema)
    ok = {"action": "update_task", "args": {"task_id": "task-7", "explanation": "x"}}
    jsonschema.validate(ok, schema)
    for bad in (
        {"action": "update_task", "args": {"task_id": "task-9", "explanation": "x"}},
        {"action": "cancel_task", "args": {"task_id": "task-1", "explanation": "x"}},
        {"action": "reply", "args": {"text": "x", "task_id": "task-3"}},
        {"action": "noop", "args": {}, "extra": 1},
        {"action": "dance", "args": {}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    for intent in [*INTENTS[:2], Noop()]:
        jsonschema.validate(json.loads(to_json(intent)), schema)


def test_json_schema_without_open_tasks_has_no_update_or_cancel() -> None:
    raw = json_schema([])
    assert isinstance(raw, str)
    schema = json.loads(raw)
    actions = {b["properties"]["action"]["enum"][0] for b in schema["anyOf"]}
    assert actions == {"reply", "start_task", "noop"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"action": "cancel_task", "args": {"task_id": "task-1", "explanation": "x"}}, schema)


def _ebnf_rules(grammar: str) -> dict[str, str]:
    rules: dict[str, str] = {}
    for line in grammar.strip().splitlines():
        name, sep, body = line.partition(" ::= ")
        assert sep, f"not a rule: {line!r}"
        assert re.fullmatch(r"[a-z][a-z_]*", name)
        assert name not in rules
        rules[name] = body
    return rules


def _ebnf_to_regex(rules: dict[str, str], name: str = "root") -> str:
    """Expand this (non-recursive) grammar into one regex, to check what it accepts."""
    out = []
    for token in re.findall(r'"(?:[^"\\]|\\.)*"|\[[^\]]*\][+*]?|\||[a-z][a-z_]*', rules[name]):
        if token.startswith('"'):
            out.append(re.escape(json.loads(token)))
        elif token.startswith("["):
            out.append(token.replace("\\n", "\n"))
        elif token == "|":
            out.append("|")
        else:
            out.append("(?:" + _ebnf_to_regex(rules, token) + ")")
    return "".join(out)


def _ebnf_accepts(grammar: str, text: str) -> bool:
    return re.fullmatch(_ebnf_to_regex(_ebnf_rules(grammar)), text) is not None


def test_ebnf_structure_and_task_enum() -> None:
    grammar = ebnf(["task-3", "task-7"])
    rules = _ebnf_rules(grammar)
    assert rules["root"] == "reply | start | update | cancel | noop"
    assert rules["taskid"] == '"task-3" | "task-7"'
    for intent in [*INTENTS[:2], Noop(), UpdateTask("task-7", "x, y (z)"), CancelTask("task-3", "done")]:
        assert _ebnf_accepts(grammar, to_call(intent)), to_call(intent)
    for bad in ("update_task(task-9, x)", "cancel_task(task-1, x)", "noop()", "reply()", "dance(x)"):
        assert not _ebnf_accepts(grammar, bad), bad


def test_ebnf_without_open_tasks() -> None:
    rules = _ebnf_rules(ebnf([]))
    assert rules["root"] == "reply | start | noop"
    assert "taskid" not in rules and "update" not in rules and "cancel" not in rules
    assert not _ebnf_accepts(ebnf([]), "update_task(task-1, x)")
    assert _ebnf_accepts(ebnf([]), "start_task(x)")
