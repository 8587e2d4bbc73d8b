"""Per-request decoding constraints built from the live ledger.

Both builders return plain strings ready for SGLang's ``sampling_params`` (``json_schema`` must be a
JSON *string*; ``ebnf`` is xgrammar's EBNF dialect). Task ids are an enum of the open tasks, and
``update_task``/``cancel_task`` are absent when no task is open, so a constrained model cannot name a
task that does not exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from intent.contract import ACTION_ARGS, Action

#: Upper bound on free-text arguments, so a runaway generation stays bounded.
MAX_TEXT_CHARS = 600


def allowed_actions(open_task_ids: Sequence[str]) -> list[Action]:
    """The actions a decision may take given the open tasks."""
    return [a for a in Action if open_task_ids or not a.needs_task]


def _args_schema(action: Action, open_task_ids: Sequence[str]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in ACTION_ARGS[action]:
        if name == "task_id":
            props[name] = {"type": "string", "enum": list(open_task_ids)}
        else:
            props[name] = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS}
    return {
        "type": "object",
        "properties": props,
        "required": list(ACTION_ARGS[action]),
        "additionalProperties": False,
    }


def json_schema_dict(open_task_ids: Iterable[str]) -> dict[str, Any]:
    """The decision JSON Schema as a dict: one branch per allowed action."""
    ids = _unique(open_task_ids)
    branches = [
        {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": [action.value]},
                "args": _args_schema(action, ids),
            },
            "required": ["action", "args"],
            "additionalProperties": False,
        }
        for action in allowed_actions(ids)
    ]
    return {"title": "Decision", "anyOf": branches}


def json_schema(open_task_ids: Iterable[str]) -> str:
    """The decision JSON Schema as a compact JSON string (what SGLang's ``json_schema`` expects)."""
    return json.dumps(json_schema_dict(open_task_ids), separators=(",", ":"))


def _ebnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ebnf(open_task_ids: Iterable[str]) -> str:
    """An EBNF grammar (xgrammar/GBNF dialect) for the call-string format with the same rule."""
    ids = _unique(open_task_ids)
    actions = allowed_actions(ids)
    names = {
        Action.REPLY: "reply",
        Action.START_TASK: "start",
        Action.UPDATE_TASK: "update",
        Action.CANCEL_TASK: "cancel",
        Action.NOOP: "noop",
    }
    lines = ["root ::= " + " | ".join(names[a] for a in actions)]
    for action in actions:
        rule = names[action]
        if action is Action.NOOP:
            lines.append(f'{rule} ::= "noop"')
        elif action.needs_task:
            lines.append(f'{rule} ::= "{action.value}(" taskid ", " text ")"')
        else:
            lines.append(f'{rule} ::= "{action.value}(" text ")"')
    if ids:
        lines.append("taskid ::= " + " | ".join(_ebnf_literal(i) for i in ids))
    # One line of free text; the final ")" closes the call (end of generation follows it).
    lines.append("text ::= [^\\n]+")
    return "\n".join(lines) + "\n"


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))
