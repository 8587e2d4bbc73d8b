"""The ``embedded`` backend: the CPU decision tier, trained in the project, the default without a GPU.

It wraps :class:`~intent.embedded_model.EmbeddedModel` (numpy inference, well under a millisecond) and
fills the action's arguments from the turn itself:

* ``start_task`` / ``update_task`` / ``cancel_task``: the explanation is the user's message, cleaned of
  disfluencies (for a tool callback, the user's latest message before it);
* ``reply``: a short templated sentence consistent with the ledger (the result of a completed callback,
  the last update of the task the user asks about, or an acknowledgement). The embedded tier does not
  write free prose; a cascade sends replies that need it to a generative tier.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from intent.backend import BackendError, Decision, DecisionRequest
from intent.contract import Action, ChatMessage, Intent, TaskInfo, make_intent, validate
from intent.cues import compile_all
from intent.embedded_model import ArtefactError, EmbeddedModel, Prediction
from intent.features import FEATURE_CACHE, task_view
from intent.text import clean_utterance, content_stems, may_name_task, overlap, tokens, tool_event
from intent.wire import to_call

NAME = "embedded"


class EmbeddedBackend:
    """Backend over a pickle-free embedded model artefact (the shipped one by default)."""

    name = NAME

    def __init__(self, model: EmbeddedModel) -> None:
        self.model = model

    @classmethod
    def load(cls, path: Path | str | None = None) -> EmbeddedBackend:
        """Load ``path`` (or the shipped artefact); a bad artefact raises BackendError."""
        try:
            model = EmbeddedModel.load(path)
        except ArtefactError as exc:
            raise BackendError(NAME, str(exc)) from None
        compile_all()  # the cue patterns: compiled at load, not during the first decisions
        return cls(model)

    async def decide(self, request: DecisionRequest) -> Decision:
        return self.decide_sync(request)

    def decide_sync(self, request: DecisionRequest) -> Decision:
        """The decision, computed inline (it is CPU-bound and takes well under a millisecond)."""
        t0 = time.perf_counter()
        if not request.transcript:
            raise BackendError(NAME, "empty transcript: nothing to decide on")
        open_ids = set(request.open_task_ids)
        tasks = [t for t in request.tasks if t.id in open_ids]
        pred = self.model.predict(request.transcript, tasks)
        intent = validate(build_intent(pred, request.transcript, tasks), open_ids)
        return Decision(
            intent=intent,
            confidence=min(1.0, max(0.0, pred.confidence)),
            tier=NAME,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            raw=to_call(intent),
            confidence_source="calibrated",
        )

    async def aclose(self) -> None:
        """Nothing to release (no connections)."""


def build_intent(pred: Prediction, transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo]) -> Intent:
    """Fill the predicted action's arguments from the turn."""
    match pred.action:
        case Action.NOOP:
            return make_intent(Action.NOOP, {})
        case Action.REPLY:
            stems = pred.turn.stems if pred.turn is not None else None
            return make_intent(Action.REPLY, {"text": reply_text(transcript, tasks, stems)})
        case Action.START_TASK:
            return make_intent(Action.START_TASK, {"explanation": _explanation(transcript)})
        case Action.UPDATE_TASK | Action.CANCEL_TASK:
            assert pred.task_id is not None
            explanation = _explanation(transcript)
            return make_intent(pred.action, {"task_id": pred.task_id, "explanation": explanation})


def _explanation(transcript: Sequence[ChatMessage]) -> str:
    """The user's words (for a tool callback, the user's latest message before it, if any)."""
    last = transcript[-1]
    if last.role != "user":
        last = next((m for m in reversed(transcript) if m.role == "user"), last)
    return clean_utterance(last.content)


def reply_text(
    transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], stems: frozenset[str] | None = None
) -> str:
    """A short reply consistent with the ledger; never invents a result.

    ``stems`` are the last message's content stems when the caller has them (the model's scan).
    """
    last = transcript[-1]
    event = tool_event(last.content) if last.role == "tool" else None
    if event is not None:
        task = next((t for t in tasks if t.id.lower() == event[0]), None)
        body = last.content.split("]", 1)[-1].strip()
        what = f" on {_lower_first(task.summary)}" if task is not None else ""
        match event[1]:
            case "completed":
                return f"Done{what}: {body}" if body else f"That's done{what}."
            case "failed":
                return f"Sorry, that didn't work{what}: {body}" if body else f"Sorry, that failed{what}."
            case _:
                return f"Update{what}: {body}" if body else f"Still working{what}."
    if stems is None:
        stems = content_stems(last.content)
    scored = sorted(((overlap(stems, _task_stems(t.summary, t.last_update)), t) for t in tasks), key=_first)
    if scored and scored[-1][0] >= 0.25:
        task = scored[-1][1]
        status = task.last_update.strip() or "it's in progress"
        return f"About {_lower_first(task.summary)}: {_lower_first(status)}."
    return "Sure, I can help with that." if "?" in last.content else "Got it."


@lru_cache(maxsize=FEATURE_CACHE)
def _task_stems(summary: str, last_update: str) -> frozenset[str]:
    """Stems of a task as the reply compares them (cached: open tasks are the same turn after turn).

    Those of the joined text: the union of the two texts' stems (task_view's, which the model asked
    for this turn) unless joining them can change their tokens (see task_view).
    """
    if may_name_task(summary.lower()) or may_name_task(last_update.lower()) or tokens(summary)[-1:] == ("-",):
        return content_stems(f"{summary} {last_update}")
    return task_view(summary, last_update)[0]


def _first(item: tuple[float, TaskInfo]) -> float:
    return item[0]


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless it starts an acronym or code ("Q3", "EU")."""
    text = text.strip().rstrip(".")
    if len(text) > 1 and (text[1].isupper() or text[1].isdigit()):
        return text
    return text[:1].lower() + text[1:]
