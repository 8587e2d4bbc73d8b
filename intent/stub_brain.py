"""The stand-in server's "model": a deterministic keyword brain, a toy tokenizer and synthetic log-probs.

This is NOT a model. It exists so that sraq's HTTP tiers, the router, the demo and the benchmarks can
run on machines without a GPU. It reads what a real model would read (our rendered prompt and the
grammar of the request), picks an action with a few keyword rules, and writes an output that
satisfies the grammar it was sent: task ids come from the grammar's enum, actions absent from the
grammar are never produced. The log-probs are synthetic but shaped like SGLang's: one
``[logprob, token_id, text]`` triple per position, top-k lists with the allowed actions at the action
position and grammar-masked entries clamped to float32's minimum (SGLang 0.5.2x).

``Brain`` is a Protocol so a real decision function (the embedded tier, once it is available) can
replace :class:`KeywordBrain` without touching the server.
"""

from __future__ import annotations

import functools
import json
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from intent.backend import BackendError, DecisionRequest
from intent.confidence import TokenCandidate, action_offset
from intent.constraints import MAX_TEXT_CHARS
from intent.contract import ACTION_ARGS, Action, ChatMessage, TaskInfo
from intent.errors import InvalidDecision

MASKED_LOGPROB = -3.4028234663852886e38  # what SGLang 0.5.2x reports for grammar-masked tokens
_TOKEN = re.compile(r"<\|[a-z]+\|>| ?[^\W\d_]+| ?\d+|_| ?[^\w\s]+|\s+")


def tokenize(text: str) -> list[str]:
    """A toy BPE-like split: words (with their leading space), digits, ``_``, punctuation runs, spaces."""
    return _TOKEN.findall(text)


@functools.lru_cache(maxsize=65536)
def token_id(token: str) -> int:
    """A stable fake vocabulary id (special harmony tokens keep their real ids)."""
    return _SPECIAL.get(token, 1000 + zlib.crc32(token.encode()) % 199_000)


_SPECIAL = {"<|return|>": 200002, "<|constrain|>": 200003, "<|channel|>": 200005, "<|start|>": 200006}
_SPECIAL |= {"<|end|>": 200007, "<|message|>": 200008, "<|call|>": 200012}


#: Runner-up tokens shown at positions where the output is not in doubt (synthetic, low probability).
_ALTERNATIVES = tuple(
    TokenCandidate(-4.5 - j * 1.1, token_id(t), t) for j, t in enumerate((" the", ",", ".", " and", " a", "\n", " to"))
)


class Grammar(msgspec.Struct, frozen=True, kw_only=True):
    """What the request's grammar allows: actions, task ids, output format, and the JSON wrapper key."""

    fmt: str  # "json" | "call"
    actions: tuple[Action, ...]
    task_ids: tuple[str, ...]
    wrapper: str | None = None  # OpenAI strict mode: {"<wrapper>": decision}
    max_chars: int = MAX_TEXT_CHARS


def read_json_schema(schema: dict[str, Any]) -> Grammar:
    """Allowed actions and task ids from a decision JSON Schema (plain or wrapped in a root object)."""
    wrapper = None
    if "anyOf" not in schema and schema.get("type") == "object":
        props = schema.get("properties", {})
        if len(props) == 1:
            wrapper, schema = next(iter(props.items()))
    actions: list[Action] = []
    ids: list[str] = []
    for branch in schema.get("anyOf", []):
        props = branch.get("properties", {})
        for name in props.get("action", {}).get("enum", []):
            actions.append(Action(name))
        ids.extend(props.get("args", {}).get("properties", {}).get("task_id", {}).get("enum", []))
    if not actions:
        actions = list(Action)
    return Grammar(fmt="json", actions=tuple(actions), task_ids=tuple(dict.fromkeys(ids)), wrapper=wrapper)


def read_ebnf(grammar: str) -> Grammar:
    """Allowed actions and task ids from the call-string EBNF of :func:`intent.constraints.ebnf`."""
    actions = [a for a in Action if f'"{a.value}' in grammar]
    ids: list[str] = []
    for line in grammar.splitlines():
        if line.startswith("taskid ::="):
            ids = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
    return Grammar(fmt="call", actions=tuple(actions), task_ids=tuple(ids))


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """A brain's answer: the action, its args, and a distribution over the allowed actions."""

    action: Action
    args: dict[str, str]
    probs: dict[str, float]


class Brain(Protocol):
    def choose(
        self, tasks: Sequence[TaskInfo], transcript: Sequence[ChatMessage], grammar: Grammar, low: bool
    ) -> Choice:
        """Pick an action the grammar allows; ``low`` asks for a below-threshold (but same) decision."""
        ...


_CANCEL = re.compile(r"\b(cancel|stop|abort|never ?mind|forget (it|about)|don'?t bother|no longer|drop)\b", re.I)
_UPDATE = re.compile(r"\b(actually|instead|change|make it|also|only|update|switch|rather|add|prefer|but)\b", re.I)
_START = re.compile(
    r"\b(find|book|search|look up|order|remind|schedule|research|check|get me|buy|plan|compare|send|draft|"
    r"write|translate|summari[sz]e|can you|could you|please)\b",
    re.I,
)
_ACK = re.compile(
    r"^((ok(ay)?|thanks?( you)?|thx|cool|great|got it|sure|hmm+|uh+|yes|yep|alright|nice)[.,! ]*)+$", re.I
)
_WORD = re.compile(r"[^\W\d_]{4,}")


class KeywordBrain:
    """Deterministic keyword rules: cancel > update (with an open task) > start > ack (noop) > reply."""

    def choose(
        self, tasks: Sequence[TaskInfo], transcript: Sequence[ChatMessage], grammar: Grammar, low: bool
    ) -> Choice:
        role, text = (transcript[-1].role, transcript[-1].content) if transcript else ("", "")
        open_ids = list(grammar.task_ids)
        wanted, strength = self._rule(role, text, bool(open_ids))
        action = wanted if wanted in grammar.actions else _fallback(grammar.actions)
        args = self._args(action, text, tasks, open_ids, grammar.max_chars)
        return Choice(action=action, args=args, probs=_spread(action, grammar.actions, _top(text, strength, low)))

    @staticmethod
    def _rule(role: str, text: str, has_open: bool) -> tuple[Action, float]:
        if not text:
            return Action.NOOP, 0.9
        if role == "tool":
            if re.search(r"\b(failed|error|completed|done|finished|result)\b", text, re.I):
                return Action.REPLY, 0.85
            return Action.NOOP, 0.9
        if has_open and _CANCEL.search(text):
            return Action.CANCEL_TASK, 0.9
        if has_open and _UPDATE.search(text):
            return Action.UPDATE_TASK, 0.82
        if _START.search(text):
            return Action.START_TASK, 0.9
        if _ACK.match(text.strip()):
            return Action.NOOP, 0.93
        return Action.REPLY, 0.86

    @staticmethod
    def _args(action: Action, text: str, tasks: Sequence[TaskInfo], open_ids: list[str], limit: int) -> dict[str, str]:
        said = (text or "(no text)")[:limit]
        match action:
            case Action.REPLY:
                return {"text": ("Here is what I know: " + said)[:limit]}
            case Action.START_TASK:
                return {"explanation": said}
            case Action.UPDATE_TASK | Action.CANCEL_TASK:
                return {"task_id": _pick_task(text, tasks, open_ids), "explanation": said}
            case _:
                return {}


class EmbeddedBrain:
    """The project's embedded CPU tier as the stand-in's brain (its decisions, keyword-free)."""

    def __init__(self, model_path: str | None = None) -> None:
        from intent.embedded import EmbeddedBackend  # optional: keeps the keyword brain import-light

        self._backend = EmbeddedBackend.load(model_path)

    def choose(
        self, tasks: Sequence[TaskInfo], transcript: Sequence[ChatMessage], grammar: Grammar, low: bool
    ) -> Choice:
        allowed = set(grammar.task_ids)
        visible = [t for t in tasks if t.id in allowed] or [TaskInfo(id=i, summary="") for i in grammar.task_ids]
        request = DecisionRequest(conversation_id="stub", turn_id="stub", transcript=transcript, tasks=visible)
        try:
            decision = self._backend.decide_sync(request)
        except (BackendError, InvalidDecision):
            return KeywordBrain().choose(tasks, transcript, grammar, low)
        action = decision.intent.action
        args = {k: (v or "(none)")[: grammar.max_chars] for k, v in decision.intent.args().items()}
        if action not in grammar.actions:
            return KeywordBrain().choose(tasks, transcript, grammar, low)
        text = transcript[-1].content if transcript else ""
        strength = min(0.99, max(0.5, decision.confidence))
        return Choice(action=action, args=args, probs=_spread(action, grammar.actions, _top(text, strength, low)))


def _top(text: str, strength: float, low: bool) -> float:
    """The chosen action's probability: ``strength`` with a deterministic jitter, or ~0.45 when ``low``."""
    jitter = (zlib.crc32(text.encode()) % 1000) / 1000
    return 0.42 + 0.06 * jitter if low else strength + (0.99 - strength) * 0.5 * jitter


def _fallback(allowed: Sequence[Action]) -> Action:
    for a in (Action.REPLY, Action.NOOP, Action.START_TASK):
        if a in allowed:
            return a
    return allowed[0]


def _pick_task(text: str, tasks: Sequence[TaskInfo], open_ids: list[str]) -> str:
    """The open task whose summary shares most words with the turn; the most recent on a tie."""
    words = _stems(text)
    by_id = {t.id: t for t in tasks}
    best, best_score = open_ids[-1], 0
    for tid in reversed(open_ids):
        task = by_id.get(tid)
        if task is None:
            continue
        score = len(words & _stems(task.summary + " " + task.last_update))
        if score > best_score:
            best, best_score = tid, score
    return best


def _stems(text: str) -> set[str]:
    """Crude stems (first five letters) so "flight" matches "flights"."""
    return {w.lower()[:5] for w in _WORD.findall(text)}


def _spread(action: Action, allowed: Sequence[Action], top: float) -> dict[str, float]:
    """``top`` on ``action``, the rest geometrically over the other allowed actions."""
    others = [a for a in allowed if a is not action]
    weights = [0.5**i for i in range(len(others))]
    rest = 1.0 - top if others else 0.0
    probs = {action.value: top if others else 1.0}
    for a, w in zip(others, weights, strict=True):
        probs[a.value] = rest * w / sum(weights)
    return probs


def render_output(choice: Choice, grammar: Grammar) -> str:
    """The output text the grammar admits for ``choice`` (compact JSON, or the call string)."""
    if grammar.fmt == "call":
        args = choice.args
        match choice.action:
            case Action.NOOP:
                return "noop"
            case Action.UPDATE_TASK | Action.CANCEL_TASK:
                return f"{choice.action.value}({args['task_id']}, {args['explanation']})"
            case _:
                return f"{choice.action.value}({args[ACTION_ARGS[choice.action][0]]})"
    decision = {"action": choice.action.value, "args": choice.args}
    body = {grammar.wrapper: decision} if grammar.wrapper else decision
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def synth_logprobs(
    text: str, choice: Choice, grammar: Grammar, top_n: int
) -> tuple[list[str], list[TokenCandidate], list[list[TokenCandidate]]]:
    """Tokens, chosen-token log-probs and top-k lists for an output, SGLang-shaped."""
    tokens = tokenize(text)
    offset = action_offset(text, "json" if grammar.fmt == "json" else "call")
    chosen: list[TokenCandidate] = []
    tops: list[list[TokenCandidate]] = []
    pos = 0
    for i, tok in enumerate(tokens):
        if offset is not None and pos == offset:
            ranked = sorted(choice.probs.items(), key=lambda kv: -kv[1])
            cands = [TokenCandidate(math.log(p), token_id(tokenize(a)[0]), tokenize(a)[0]) for a, p in ranked]
            masked = [a.value for a in Action if a.value not in choice.probs]
            cands += [TokenCandidate(MASKED_LOGPROB, token_id(tokenize(a)[0]), tokenize(a)[0]) for a in masked]
        else:
            lp = -0.002 - 0.03 * ((token_id(tok) + i) % 100) / 100
            cands = [TokenCandidate(lp, token_id(tok), tok), *(a for a in _ALTERNATIVES if a.text != tok)]
        tops.append(cands[:top_n])
        chosen.append(next(c for c in cands if c.text == tok) if any(c.text == tok for c in cands) else cands[0])
        pos += len(tok)
    return tokens, chosen, tops
