"""The two wire formats of a decision.

* JSON: ``{"action": "update_task", "args": {"task_id": "task-32", "explanation": "..."}}``;
  args values are strings, unknown keys and unknown actions are rejected.
* Call string (the reference fine-tuning dataset): ``reply(...)``, ``start_task(...)``,
  ``update_task(task-32, ...)``, ``cancel_task(task-8, ...)``, ``noop``. The text runs from the first
  ``(`` to the final ``)`` and may hold commas, parentheses, quotes and newlines; for update/cancel the
  task id is everything before the first comma.
"""

from __future__ import annotations

import msgspec

from intent.contract import ACTION_ARGS, Action, Intent, make_intent
from intent.errors import InvalidDecision


class _WireDecision(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    args: dict[str, str] = msgspec.field(default_factory=dict)


_wire_decoder = msgspec.json.Decoder(_WireDecision)
_encoder = msgspec.json.Encoder()


def parse_json(raw: str | bytes) -> Intent:
    """Parse the JSON wire format; any malformed input raises InvalidDecision."""
    try:
        wire = _wire_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidDecision(f"bad decision JSON: {exc}", _as_text(raw)) from None
    try:
        return make_intent(wire.action, wire.args)
    except InvalidDecision as exc:
        raise InvalidDecision(exc.reason, _as_text(raw)) from None


def to_json(intent: Intent) -> str:
    return _encoder.encode({"action": intent.action.value, "args": intent.args()}).decode("utf-8")


def to_call(intent: Intent) -> str:
    """Write the call-string format."""
    args = intent.args()
    match intent.action:
        case Action.NOOP:
            return "noop"
        case Action.UPDATE_TASK | Action.CANCEL_TASK:
            return f"{intent.action.value}({args['task_id']}, {args['explanation']})"
        case _:
            (name,) = ACTION_ARGS[intent.action]
            return f"{intent.action.value}({args[name]})"


def parse_call(raw: str) -> Intent:
    """Parse the call-string format; any malformed input raises InvalidDecision."""
    if not isinstance(raw, str):
        raise InvalidDecision(f"call string must be text, got {type(raw).__name__}")
    text = raw.strip()
    if text in ("noop", "noop()"):
        return make_intent(Action.NOOP, {})
    name, paren, rest = text.partition("(")
    name = name.strip()
    if not paren:
        raise InvalidDecision(f"not a call: {_short(text)!r}", raw)
    if not rest.endswith(")"):
        raise InvalidDecision(f"call is not closed with ')': {_short(text)!r}", raw)
    body = rest[:-1]
    try:
        action = Action(name)
    except ValueError:
        raise InvalidDecision(f"unknown action {name!r}", raw) from None
    match action:
        case Action.NOOP:
            if body.strip():
                raise InvalidDecision("noop takes no arguments", raw)
            return make_intent(action, {})
        case Action.UPDATE_TASK | Action.CANCEL_TASK:
            task_id, comma, explanation = body.partition(",")
            if not comma:
                raise InvalidDecision(f"{name} needs 'task id, explanation'", raw)
            try:
                return make_intent(action, {"task_id": task_id, "explanation": explanation.strip()})
            except InvalidDecision as exc:
                raise InvalidDecision(exc.reason, raw) from None
        case _:
            (arg,) = ACTION_ARGS[action]
            return make_intent(action, {arg: body.strip()})


def parse_any(raw: str) -> Intent:
    """Parse either format: JSON when the text starts with ``{``, else a call string."""
    return parse_json(raw) if raw.lstrip().startswith("{") else parse_call(raw)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _as_text(raw: str | bytes) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
