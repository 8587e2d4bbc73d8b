"""The intent contract and the decision tiers (embedded, sglang, openai) of sraq."""

from intent.constraints import allowed_actions, ebnf, json_schema, json_schema_dict
from intent.contract import (
    ACTION_ARGS,
    ACTIONS,
    Action,
    CancelTask,
    ChatMessage,
    Intent,
    Noop,
    Reply,
    StartTask,
    TaskInfo,
    UpdateTask,
    make_intent,
    validate,
)
from intent.errors import InvalidDecision
from intent.wire import parse_any, parse_call, parse_json, to_call, to_json

__all__ = [
    "ACTIONS",
    "ACTION_ARGS",
    "Action",
    "CancelTask",
    "ChatMessage",
    "Intent",
    "InvalidDecision",
    "Noop",
    "Reply",
    "StartTask",
    "TaskInfo",
    "UpdateTask",
    "allowed_actions",
    "ebnf",
    "json_schema",
    "json_schema_dict",
    "make_intent",
    "parse_any",
    "parse_call",
    "parse_json",
    "to_call",
    "to_json",
    "validate",
]
