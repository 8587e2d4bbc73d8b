"""Features of the embedded tier: sparse TF-IDF blocks, ledger-aware dense features, task-pair features.

One implementation serves training (rows stacked into a scipy matrix by :mod:`intent.training`) and
inference (a sparse vector dotted with the coefficients in :mod:`intent.embedded`), so both see the same
numbers. Nothing here imports scikit-learn.

Action features = [TF-IDF of the last message (word 1-2-grams + char 3-5-grams) | TF-IDF of the recent
context (role-tagged words of the three messages before it) | dense ledger/turn features].
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from intent.contract import ChatMessage, TaskInfo
from intent.cues import CUE_NAMES, cue_flags
from intent.text import (
    TOOL_EVENTS,
    char_ngrams,
    content_stems,
    dice,
    may_name_task,
    mentioned_ids,
    overlap,
    tokens,
    tool_event,
    trigram_set,
    trigrams_of,
    word_ngrams,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CONTEXT_MESSAGES = 3
PREV_USER_CUES = ("cancel", "change", "request")
ROLE_TAG = {"user": "u:", "assistant": "a:", "tool": "t:"}
ROLES = ("user", "assistant", "tool")
_FILLERS_TEXT = "uh um er hmm mm ok okay k cool thanks thank thx ty yeah yep sure right hold on sec wait"
FILLERS = frozenset(_FILLERS_TEXT.split())

DENSE_NAMES: tuple[str, ...] = (
    *(f"tasks={n}" for n in ("0", "1", "2", "3+")),
    *(f"last_role={r}" for r in ROLES),
    *(f"tool_event={e}" for e in (*TOOL_EVENTS, "other")),
    *(f"prev_role={r}" for r in ("none", *ROLES)),
    "log_messages",
    "log_words",
    "ends_question",
    "has_question",
    "ends_terminal",
    "ends_cutoff",
    "task_overlap_max",
    "task_overlap_second",
    "task_trigram_max",
    "mentions_open_id",
    "tool_id_open",
    "assistant_just_spoke",
    "log_content_words",
    "filler_share",
    *(f"cue={c}" for c in CUE_NAMES),
    *(f"prev_user_cue={c}" for c in PREV_USER_CUES),
)

PAIR_NAMES: tuple[str, ...] = (
    "msg_in_summary",
    "msg_in_task",
    "msg_task_trigram",
    "ctx_in_task",
    "ctx_task_trigram",
    "is_best_overlap",
    "overlap_gap",
    "trigram_gap",
    "id_in_message",
    "id_in_last_tool",
    "id_in_transcript",
    "assistant_about_task",
    "focus_clause_overlap",
    "kept_clause_overlap",
    "focus_gap",
    "ctx_gap",
    "ctx_in_task_msg_silent",
    "ctx_trigram_msg_silent",
    "ctx_gap_msg_silent",
    "assistant_about_task_msg_silent",
)

CLAUSE_SPLIT = re.compile(r"[.;!?\n]+|,\s*(?=(?:but|and|so|though|although)\b)|\b(?:but|however|though|although)\b")
KEEP_CUE = re.compile(
    r"\b(?:still|keep|keeping|stay|stays|continue|carry on|finish|go ahead|proceed|leave|remain|remains|as planned|"
    r"is fine|are fine|unchanged|as is)\b"
)


#: Character n-grams are taken from the first this-many characters (long emails stay cheap; the ask
#: is rarely only at the end).
CHAR_NGRAM_CHARS = 600


def message_terms(message: ChatMessage) -> list[str]:
    """Terms of the message being decided on.

    A task callback gets its own term space (``tw:`` words, event tag, no character n-grams): the
    words of a callback ("[task-2 progress] working on: please book ...") echo the task and must not
    read like a user asking for something.
    """
    text = message.content
    if message.role == "tool":
        event = tool_event(text)
        body = text.split("]", 1)[-1] if event is not None else text
        return [f"tool_event={event[1] if event else 'none'}", *word_ngrams(body, prefix="tw:")]
    return word_ngrams(text) + char_ngrams(text[:CHAR_NGRAM_CHARS])


def context_terms(transcript: Sequence[ChatMessage]) -> list[str]:
    """Role-tagged word unigrams of the messages before the last one (most recent few)."""
    terms: list[str] = []
    for m in transcript[-1 - CONTEXT_MESSAGES : -1]:
        tag = ROLE_TAG.get(m.role, "x:")
        event = tool_event(m.content) if m.role == "tool" else None
        if event is not None:
            terms.append(f"{tag}event={event[1]}")
        terms.extend(tag + t for t in tokens(m.content))
    return terms


class TfidfVocab:
    """A vocabulary with smoothed idf and sublinear tf, l2-normalised (like scikit-learn's defaults)."""

    def __init__(self, terms: Sequence[str], idf: FloatArray) -> None:
        self.terms = list(terms)
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.idf = np.asarray(idf, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.terms)

    @classmethod
    def fit(cls, docs: Iterable[Sequence[str]], min_df: int = 2, max_terms: int = 50_000) -> TfidfVocab:
        docs = list(docs)
        df: Counter[str] = Counter()
        for doc in docs:
            df.update(set(doc))
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_terms]
        kept.sort()
        n = len(docs)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float64)
        return cls(kept, idf)

    def transform(self, doc: Sequence[str]) -> tuple[IntArray, FloatArray]:
        """Sparse (indices, values) of one document; values are l2-normalised."""
        get = self.index.get
        found = [i for i in map(get, doc) if i is not None]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        idx, counts = np.unique(np.asarray(found, dtype=np.int64), return_counts=True)
        tf = counts.astype(np.float64)
        vals = (1.0 + np.log(tf)) * self.idf[idx]
        vals /= float(np.sqrt(vals @ vals))
        return idx, vals


def dense_features(transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo]) -> FloatArray:
    """Turn- and ledger-aware features of the last message (see DENSE_NAMES)."""
    last = transcript[-1]
    text = last.content
    toks = tokens(text)
    n_tasks = len(tasks)
    f: list[float] = [float(n_tasks == 0), float(n_tasks == 1), float(n_tasks == 2), float(n_tasks >= 3)]
    f += [float(last.role == r) for r in ROLES]
    event = tool_event(text) if last.role == "tool" else None
    f += [float(event is not None and event[1] == e) for e in (*TOOL_EVENTS, "other")]
    prev_role = transcript[-2].role if len(transcript) > 1 else "none"
    f += [float(prev_role == r) for r in ("none", *ROLES)]
    msg_stems = content_stems(text)
    overlaps = sorted((overlap(msg_stems, _task_stems(t)) for t in tasks), reverse=True)
    msg_tri = trigram_set(text[:CHAR_NGRAM_CHARS])
    trigrams = [dice(msg_tri, _task_trigrams(t)) for t in tasks]
    open_ids = {t.id.lower() for t in tasks}
    f += [
        math.log1p(len(transcript)),
        math.log1p(len(toks)) / 3.0,
        *message_shape(text, len(toks)),
        overlaps[0] if overlaps else 0.0,
        overlaps[1] if len(overlaps) > 1 else 0.0,
        max(trigrams, default=0.0),
        float(bool(mentioned_ids(text) & open_ids)),
        float(event is not None and event[0] in open_ids),
        float(any(m.role == "assistant" for m in transcript[-3:-1])),
        math.log1p(len(msg_stems)) / 2.0,
        sum(1 for t in toks if t in FILLERS) / max(1, len(toks)),
    ]
    # cue lexicons describe what a *user* says; a callback's echoed task text must not fire them
    f += cue_flags(text) if last.role == "user" else [0.0] * len(CUE_NAMES)
    # a tool callback is decided on after the user's last words: their cues still matter
    prev_user = next((m.content for m in reversed(transcript[:-1]) if m.role == "user"), "")
    f += _prev_user_cues(prev_user)
    return np.asarray(f, dtype=np.float64)


def message_shape(text: str, n_tokens: int) -> list[float]:
    """ends_question, has_question, ends_terminal and ends_cutoff of a message with ``n_tokens`` tokens."""
    stripped = text.rstrip()
    return [
        float(stripped.endswith("?")),
        float("?" in text),
        float(stripped[-1:] in ".!?)\"'" or (bool(stripped) and ord(stripped[-1]) > 0x2600)),
        float(stripped.endswith(("-", "—", "–", "...", "…")) or (stripped[-1:].isalpha() and n_tokens > 3)),
    ]


#: Bound of the caches below: features of tasks and of earlier messages, which repeat turn after turn.
FEATURE_CACHE = 4096


@lru_cache(maxsize=FEATURE_CACHE)
def task_view(summary: str, last_update: str) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Stems, trigrams and summary stems of a task: the same every turn until its summary or update changes.

    The stems are those of the two texts (as the model was trained); the trigrams, trigram_set of the
    joined text, come from the two texts' own tokens (the summary's are usually cached: updates
    change, summaries do not). Joining with a space keeps both texts' tokens unless a task id forms
    across the join or the summary ends in a dangling "-" (a token only at the very end of a text):
    those take the joined text.
    """
    in_summary, s_toks = content_stems(summary), tokens(summary)
    stems = in_summary | content_stems(last_update)
    if may_name_task(summary.lower()) or may_name_task(last_update.lower()) or s_toks[-1:] == ("-",):
        return stems, trigram_set(f"{summary} {last_update}"), in_summary
    return stems, trigrams_of(s_toks + tokens(last_update)), in_summary


def _task_stems(task: TaskInfo) -> frozenset[str]:
    return task_view(task.summary, task.last_update)[0]


def _task_trigrams(task: TaskInfo) -> frozenset[str]:
    return task_view(task.summary, task.last_update)[1]


@lru_cache(maxsize=FEATURE_CACHE)
def _earlier_ids(content: str) -> frozenset[str]:
    """Task ids named in a message before the last one (cached: it is rescanned every later turn)."""
    return frozenset(mentioned_ids(content))


@lru_cache(maxsize=FEATURE_CACHE)
def _prev_user_cues(content: str) -> tuple[float, ...]:
    """Cues of the user's message before the last one (cached: it is the same for several turns)."""
    return tuple(cue_flags(content, PREV_USER_CUES))


def pair_features(transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo]) -> FloatArray:
    """One row per task: how much the turn is about that task (see PAIR_NAMES).

    Computed in Python floats, column by column, and converted to an array once: per-element numpy
    assignments on a handful of rows cost more than the arithmetic.
    """
    if not tasks:
        return np.zeros((0, len(PAIR_NAMES)), dtype=np.float64)
    last = transcript[-1].content
    # a tool callback is decided on, but the user's words before it say which task matters
    msg = last
    if transcript[-1].role != "user":
        last_user = next((m.content for m in reversed(transcript) if m.role == "user"), None)
        msg = last if last_user is None else f"{last} {last_user}"
    msg_stems, msg_tri = content_stems(msg), trigram_set(msg[:CHAR_NGRAM_CHARS])
    ctx = " ".join(m.content for m in transcript[-1 - CONTEXT_MESSAGES : -1])
    ctx_stems, ctx_tri = content_stems(ctx), trigram_set(ctx[-CHAR_NGRAM_CHARS:])
    last_tool = next((m.content for m in reversed(transcript) if m.role == "tool"), "")
    tool_evt = tool_event(last_tool)
    prev_assistant = next((m.content for m in reversed(transcript[:-1]) if m.role == "assistant"), "")
    asst_stems = content_stems(prev_assistant)
    kept: list[frozenset[str]] = []
    focus: list[frozenset[str]] = []
    for clause in CLAUSE_SPLIT.split(msg.lower()):
        if clause and clause.strip():
            (kept if KEEP_CUE.search(clause) else focus).append(content_stems(clause))
    in_msg = mentioned_ids(last)
    in_transcript = in_msg.union(*(_earlier_ids(m.content) for m in transcript[:-1]))
    summary_in, task_in, task_tri, ctx_in, ctx_tri_col = [], [], [], [], []
    id_msg, id_tool, id_seen, asst_in, focus_in, kept_in = [], [], [], [], [], []
    for task in tasks:
        t_stems, t_tri, _ = task_view(task.summary, task.last_update)
        tid = task.id.lower()
        summary_in.append(overlap(msg_stems, content_stems(task.summary)))
        task_in.append(overlap(msg_stems, t_stems))
        task_tri.append(dice(msg_tri, t_tri))
        ctx_in.append(overlap(ctx_stems, t_stems))
        ctx_tri_col.append(dice(ctx_tri, t_tri))
        id_msg.append(float(tid in in_msg))
        id_tool.append(float(tool_evt is not None and tool_evt[0] == tid))
        id_seen.append(float(tid in in_transcript))
        asst_in.append(overlap(asst_stems, t_stems))
        focus_in.append(max((overlap(c, t_stems) for c in focus), default=0.0))
        kept_in.append(max((overlap(c, t_stems) for c in kept), default=0.0))
    # relative evidence: how far each task is from the best one
    best_overlap, best_tri, best_focus, best_ctx = max(task_in), max(task_tri), max(focus_in), max(ctx_in)
    ctx_gap = [v - best_ctx for v in ctx_in]
    # the recent context (and the assistant's last words) say which task is meant mostly when the
    # message itself names none ("make it the earliest one"); when it does ("change the flight
    # search"), the message's own words win: the context features are split on that condition
    silent = float(best_overlap <= 0.0)
    spoken = 1.0 - silent
    columns = {
        "msg_in_summary": summary_in,
        "msg_in_task": task_in,
        "msg_task_trigram": task_tri,
        "ctx_in_task": [v * spoken for v in ctx_in],
        "ctx_task_trigram": [v * spoken for v in ctx_tri_col],
        "is_best_overlap": [float(v >= best_overlap - 1e-12) for v in task_in],
        "overlap_gap": [v - best_overlap for v in task_in],
        "trigram_gap": [v - best_tri for v in task_tri],
        "id_in_message": id_msg,
        "id_in_last_tool": id_tool,
        "id_in_transcript": id_seen,
        "assistant_about_task": [v * spoken for v in asst_in],
        "focus_clause_overlap": focus_in,
        "kept_clause_overlap": kept_in,
        "focus_gap": [v - best_focus for v in focus_in],
        "ctx_gap": [v * spoken for v in ctx_gap],
        "ctx_in_task_msg_silent": [v * silent for v in ctx_in],
        "ctx_trigram_msg_silent": [v * silent for v in ctx_tri_col],
        "ctx_gap_msg_silent": [v * silent for v in ctx_gap],
        "assistant_about_task_msg_silent": [v * silent for v in asst_in],
    }
    return np.array([columns[name] for name in PAIR_NAMES], dtype=np.float64).T
