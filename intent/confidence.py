"""Confidence from the model's own token probabilities at the position where the action is decided.

A constrained decoder writes the action name at a known place: right after ``"action": "`` in the
JSON format, at the very start in the call format. At that position the server reports the top-k
candidate tokens with their log-probabilities (SGLang: ``meta_info.output_top_logprobs``; OpenAI:
``choices[0].logprobs.content[i].top_logprobs``). Each candidate is attributed to the action(s) whose
text it is consistent with; the mass is renormalised over the allowed actions. SGLang applies the
grammar mask before it computes log-probs, so that mass is already over allowed actions only.

When the chosen token is shared by several actions (a tokenizer that writes ``st`` for both
``start_task`` and ``stop``, say), its mass is split by the next position's distribution, and so
on: the probability of an action is the product along its path. Mass of a *non-chosen* ambiguous
candidate cannot be followed (the server only reports the chosen path) and is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import msgspec

from intent.contract import Action


class TokenCandidate(msgspec.Struct, frozen=True, array_like=True):
    """One top-k entry: ``[logprob, token_id, text]`` exactly as SGLang serialises it."""

    logprob: float | None
    token_id: int
    text: str | None


#: Top-k candidates of one output position (None when the server had none for it).
Position = Sequence[TokenCandidate] | None

_JSON_ACTION = re.compile(r'"action"\s*:\s*"')


def action_offset(text: str, fmt: str) -> int | None:
    """Character offset of the action name in an output, or None if it is not there (yet)."""
    if fmt == "json":
        m = _JSON_ACTION.search(text)
        return m.end() if m else None
    stripped = len(text) - len(text.lstrip())
    return stripped if stripped < len(text) else None


def action_targets(actions: Sequence[Action | str], fmt: str) -> dict[str, str]:
    """What the output looks like from the action name on, per action (name + its terminator)."""
    names = [a.value if isinstance(a, Action) else a for a in actions]
    if fmt == "json":
        return {n: n + '"' for n in names}
    return {n: n if n == Action.NOOP.value else n + "(" for n in names}


def action_distribution(
    token_texts: Sequence[str],
    token_logprobs: Sequence[float | None],
    top: Sequence[Position],
    offset: int,
    targets: Mapping[str, str],
) -> dict[str, float]:
    """Renormalised probability of each action in ``targets`` (empty dict when nothing is known).

    ``token_texts``/``token_logprobs`` describe the chosen output tokens; ``top[i]`` are the top-k
    candidates of position i; ``offset`` is where the action name starts in the output text.
    """
    start = 0
    k = None
    for i, t in enumerate(token_texts):
        if start + len(t) > offset:
            k = i
            break
        start += len(t)
    if k is None:
        return {}
    lead = "".join(token_texts)[start:offset]
    mass = dict.fromkeys(targets, 0.0)
    remaining = {a: lead + s for a, s in targets.items()}
    scale = 1.0
    for i in range(k, min(len(token_texts), len(top))):
        chosen = token_texts[i]
        cands = top[i] or ()
        follow: list[str] = []
        chosen_p: float | None = None
        for cand in cands:
            if cand.logprob is None or not cand.text or cand.logprob < -1e30:
                continue  # masked by the grammar (-inf, or float32 min in SGLang >= 0.5.2x)
            p = math.exp(cand.logprob)
            fits = [a for a, s in remaining.items() if s.startswith(cand.text) or cand.text.startswith(s)]
            if len(fits) == 1:
                mass[fits[0]] += scale * p
            elif len(fits) > 1 and cand.text == chosen:
                follow, chosen_p = fits, p
        if not follow:
            break
        if chosen_p is None:  # pragma: no cover - the chosen token is always in its own top-k at T=0
            lp = token_logprobs[i]
            chosen_p = math.exp(lp) if lp is not None else 0.0
        scale *= chosen_p
        remaining = {a: remaining[a][len(chosen) :] for a in follow}
    total = sum(mass.values())
    if total <= 0.0:
        return {}
    return {a: m / total for a, m in mass.items()}


def early_fixed(text: str, fmt: str, needs_task: Mapping[str, bool]) -> tuple[str, str | None] | None:
    """(action, task_id) as soon as a partial output fixes them, else None.

    Used by streaming decoders: the explanation may still be arriving when this returns.
    """
    if fmt == "json":
        m = re.search(r'"action"\s*:\s*"([a-z_]+)"', text)
        if not m:
            return None
        action = m.group(1)
        if not needs_task.get(action, False):
            return action, None
        t = re.search(r'"task_id"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
        return (action, t.group(1)) if t else None
    m = re.match(r"\s*([a-z_]+)(\(|$)", text)
    if not m:
        return None
    action = m.group(1)
    if action == Action.NOOP.value:
        return action, None
    if not m.group(2):
        return None
    if not needs_task.get(action, False):
        return action, None
    rest = text[m.end() :]
    task_id, comma, _ = rest.partition(",")
    return (action, task_id.strip()) if comma else None


def confidence_of(
    text: str,
    fmt: str,
    allowed: Sequence[Action | str],
    token_texts: Sequence[str],
    token_logprobs: Sequence[float | None],
    top: Sequence[Position],
) -> dict[str, float]:
    """The renormalised action distribution of one output (empty when the log-probs do not show it)."""
    offset = action_offset(text, fmt)
    if offset is None:
        return {}
    return action_distribution(token_texts, token_logprobs, top, offset, action_targets(allowed, fmt))
