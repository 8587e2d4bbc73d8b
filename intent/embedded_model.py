"""The embedded tier's model: a pickle-free artefact and numpy inference.

The artefact is ONE JSON file: vocabularies, idf, coefficients and calibration temperatures, with the
arrays stored as base64 little-endian float32 (``{"dtype": "<f4", "shape": [...], "b64": "..."}``).
Loading it parses JSON and calls ``numpy.frombuffer``: no pickle, no code execution, safe for an
untrusted path. scikit-learn is only needed to *train* (:mod:`intent.training`).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Sequence
from importlib import resources
from itertools import repeat
from operator import sub, truediv
from pathlib import Path
from typing import Any

import numpy as np

from intent.contract import ACTIONS, Action, ChatMessage, TaskInfo
from intent.features import DENSE_NAMES, PAIR_NAMES, FloatArray, TfidfVocab
from intent.term_index import TermIndex
from intent.text import tool_event
from intent.turn_features import Turn, dense_row, pair_rows

FORMAT = "sraq-embedded/1"
_TASK_ACTIONS = tuple(a.needs_task for a in ACTIONS)


#: What a task callback calls for: the user hears results and failures, not starts and progress.
CALLBACK_POLICY: dict[str, Action] = {
    "completed": Action.REPLY,
    "failed": Action.REPLY,
    "started": Action.NOOP,
    "progress": Action.NOOP,
}


def callback_action(message: ChatMessage) -> Action | None:
    """The policy action for a task callback message (None: not a callback with a known event)."""
    if message.role != "tool":
        return None
    event = tool_event(message.content)
    return None if event is None else CALLBACK_POLICY.get(event[1])


class ArtefactError(ValueError):
    """The model file is missing, malformed or of another format version."""


def encode_array(arr: np.ndarray[Any, Any]) -> dict[str, Any]:
    data = np.ascontiguousarray(arr, dtype="<f4")
    return {"dtype": "<f4", "shape": list(data.shape), "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(obj: object) -> FloatArray:
    if not isinstance(obj, dict) or obj.get("dtype") != "<f4" or not isinstance(obj.get("b64"), str):
        raise ArtefactError("array entry must be {'dtype': '<f4', 'shape': [...], 'b64': ...}")
    shape = tuple(int(s) for s in obj.get("shape", []))
    raw = base64.b64decode(obj["b64"], validate=True)
    flat = np.frombuffer(raw, dtype="<f4")
    if flat.size != int(np.prod(shape)):
        raise ArtefactError(f"array of shape {shape} has {flat.size} values")
    return flat.reshape(shape).astype(np.float64)


class EmbeddedModel:
    """Action probabilities (temperature-calibrated logistic regression) and a task-id resolver."""

    def __init__(
        self,
        *,
        msg_vocab: TfidfVocab,
        ctx_vocab: TfidfVocab,
        coef: FloatArray,
        intercept: FloatArray,
        temperature: float,
        pair_coef: FloatArray,
        pair_intercept: float,
        pair_temperature: float,
        info: dict[str, Any] | None = None,
    ) -> None:
        n_feat = len(msg_vocab) + len(ctx_vocab) + len(DENSE_NAMES)
        if coef.shape != (n_feat, len(ACTIONS)) or intercept.shape != (len(ACTIONS),):
            raise ArtefactError(f"coefficients {coef.shape} do not match {n_feat} features x {len(ACTIONS)} actions")
        if pair_coef.shape != (len(PAIR_NAMES),):
            raise ArtefactError(f"pair coefficients {pair_coef.shape} do not match {len(PAIR_NAMES)} features")
        if temperature <= 0 or pair_temperature <= 0:
            raise ArtefactError("temperatures must be positive")
        self.msg_vocab, self.ctx_vocab = msg_vocab, ctx_vocab
        self.coef, self.intercept, self.temperature = coef, intercept, float(temperature)
        self.pair_coef, self.pair_intercept = pair_coef, float(pair_intercept)
        self.pair_temperature = float(pair_temperature)
        self.info = dict(info or {})
        self.callback_confidence = float(self.info.get("callback_policy_confidence", 0.9))
        self._terms = TermIndex(msg_vocab, ctx_vocab)
        self._dense_coef = coef[len(msg_vocab) + len(ctx_vocab) :]
        #: The dense row as float64 bytes, read by np.frombuffer: np.fromiter (and np.array more so)
        #: converts the Python floats one by one, at several times the cost.
        self._pack_dense = struct.Struct(f"{len(DENSE_NAMES)}d").pack

    # ---- inference -------------------------------------------------------------------------------

    def logits(
        self, transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], turn: Turn | None = None
    ) -> FloatArray:
        """Uncalibrated action scores in ACTIONS order.

        The same numbers as a row of the training matrix (:func:`intent.training._action_matrix`) times
        ``coef``, computed with one gather and two small products: both sparse blocks come from
        :class:`~intent.term_index.TermIndex` as rows of ``coef`` (numpy's per-call overhead, not
        arithmetic, is the cost at this size). ``turn`` is the last message's scan, made here if not given.
        """
        turn = Turn(transcript[-1]) if turn is None else turn
        rows, vals = self._terms.encode(transcript, turn)
        dense = np.frombuffer(self._pack_dense(*dense_row(transcript, tasks, turn)), np.float64)
        z: FloatArray = vals @ self.coef.take(rows, axis=0) + dense @ self._dense_coef
        z += self.intercept
        return z

    def action_proba(
        self, transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], turn: Turn | None = None
    ) -> FloatArray:
        """Calibrated probabilities over ACTIONS; update/cancel get 0 when no task is open."""
        return _softmax(self.logits(transcript, tasks, turn), self.temperature, None if tasks else _TASK_ACTIONS)

    def task_proba(
        self, transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], turn: Turn | None = None
    ) -> FloatArray:
        """Calibrated probability, per open task, that the turn is about it."""
        if not tasks:
            return np.zeros(0, dtype=np.float64)
        turn = Turn(transcript[-1]) if turn is None else turn
        s = (pair_rows(transcript, tasks, turn) @ self.pair_coef + self.pair_intercept) / self.pair_temperature
        s = s - s.max()
        p: FloatArray = np.exp(s)
        p /= p.sum()
        return p

    def predict(self, transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo]) -> Prediction:
        """The most probable action, its task (for update/cancel) and the joint confidence.

        A task callback is decided by :data:`CALLBACK_POLICY` (its event type), with the policy's
        measured agreement on the training rows as confidence: the labelled data maps callbacks to
        actions without exception, and the runtime's transcripts around callbacks (no assistant
        acknowledgement after ``start_task``) differ from the authored ones, which the classifier
        does not survive reliably.
        """
        if not transcript:
            raise ValueError("empty transcript")
        turn = Turn(transcript[-1])
        p = self.action_proba(transcript, tasks, turn)
        policy = callback_action(transcript[-1])
        if policy is not None:
            return Prediction(policy, self.callback_confidence, None, p, turn)
        best = int(p.argmax())
        action = ACTIONS[best]
        task_id, task_conf = None, 1.0
        if action.needs_task:
            q = self.task_proba(transcript, tasks, turn)
            j = int(q.argmax())
            task_id, task_conf = tasks[j].id, float(q[j])
        return Prediction(action, float(p[best]) * task_conf, task_id, p, turn)

    # ---- persistence -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "actions": [a.value for a in ACTIONS],
            "dense_features": list(DENSE_NAMES),
            "pair_features": list(PAIR_NAMES),
            "msg_terms": self.msg_vocab.terms,
            "msg_idf": encode_array(self.msg_vocab.idf),
            "ctx_terms": self.ctx_vocab.terms,
            "ctx_idf": encode_array(self.ctx_vocab.idf),
            "coef": encode_array(self.coef),
            "intercept": encode_array(self.intercept),
            "temperature": self.temperature,
            "pair_coef": encode_array(self.pair_coef),
            "pair_intercept": self.pair_intercept,
            "pair_temperature": self.pair_temperature,
            "info": self.info,
        }

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")), "utf-8")

    @classmethod
    def from_json(cls, obj: object) -> EmbeddedModel:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ArtefactError(f"not an embedded model artefact (expected format {FORMAT!r})")
        if obj.get("actions") != [a.value for a in ACTIONS]:
            raise ArtefactError("artefact was trained on another action set")
        if obj.get("dense_features") != list(DENSE_NAMES) or obj.get("pair_features") != list(PAIR_NAMES):
            raise ArtefactError("artefact was trained with another feature set; retrain it (sraq intent train)")
        try:
            return cls(
                msg_vocab=TfidfVocab(_strings(obj["msg_terms"]), decode_array(obj["msg_idf"])),
                ctx_vocab=TfidfVocab(_strings(obj["ctx_terms"]), decode_array(obj["ctx_idf"])),
                coef=decode_array(obj["coef"]),
                intercept=decode_array(obj["intercept"]),
                temperature=float(obj["temperature"]),
                pair_coef=decode_array(obj["pair_coef"]),
                pair_intercept=float(obj["pair_intercept"]),
                pair_temperature=float(obj["pair_temperature"]),
                info=dict(obj.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtefactError):
                raise
            raise ArtefactError(f"malformed artefact: {exc}") from None

    @classmethod
    def load(cls, path: Path | str | None = None) -> EmbeddedModel:
        """Load an artefact file, or the model shipped in the package when ``path`` is None."""
        try:
            if path is None:
                text = resources.files("intent").joinpath("data/embedded_model.json").read_text("utf-8")
            else:
                text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ArtefactError(f"cannot read model artefact: {exc}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtefactError(f"model artefact is not JSON: {exc.msg}") from None
        return cls.from_json(obj)


class Prediction:
    """What the model says about one turn."""

    __slots__ = ("action", "confidence", "proba", "task_id", "turn")

    def __init__(
        self, action: Action, confidence: float, task_id: str | None, proba: FloatArray, turn: Turn | None = None
    ) -> None:
        self.action, self.confidence, self.task_id, self.proba = action, confidence, task_id, proba
        #: the last message's scan, when the model made one (the reply reuses its stems)
        self.turn = turn


def _softmax(z: FloatArray, temperature: float, masked: tuple[bool, ...] | None) -> FloatArray:
    """softmax(z / temperature) with ``masked`` classes at 0, in Python floats (5 values: numpy's
    per-call overhead would be most of the cost)."""
    # the same operations in the same order, mapped in C (no comprehension: a function object and a
    # frame per list)
    scaled = list(map(truediv, z.tolist(), repeat(temperature)))
    if masked is not None:
        scaled = [-math.inf if m else v for v, m in zip(scaled, masked, strict=True)]
    top = max(scaled)
    e = list(map(math.exp, map(sub, scaled, repeat(top))))
    total = sum(e)
    return np.array(list(map(truediv, e, repeat(total))), dtype=np.float64)


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArtefactError("vocabulary must be a list of strings")
    return value
