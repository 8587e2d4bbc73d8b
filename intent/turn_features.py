"""The dense and pair features at inference: the numbers of :mod:`intent.features`, with less work per turn.

:func:`~intent.features.dense_features` and :func:`~intent.features.pair_features` stay the definitions
(training uses them). A decision needs both for one turn, plus the reply's task scan, and each used to
re-tokenise the message being decided on and re-derive what repeats from turn to turn. Here:

* :class:`Turn` scans the message being decided on ONCE per decision (tokens, stems, trigrams, cues), afresh:
  never from a cache keyed by its text, which would flatter benchmarks that repeat short messages;
* messages *before* the last one and tasks come from bounded caches keyed by their text: a
  conversation sees them again every turn (the previous user message's cues are remembered from the
  turn on which it was the last one, so they are never scanned twice);
* per-task overlaps are inlined set operations, and the context's stems and trigrams are unions of
  per-message ones when joining the messages cannot change their tokens.

``tests/test_turn_features.py`` checks these equal the definitions on every dataset row and on long,
task-heavy conversations like the orchestrator benchmark's.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice, pairwise, repeat
from operator import ge, itemgetter, mul, sub

import numpy as np

from intent.clauses import clauses, keeps
from intent.contract import ChatMessage, TaskInfo
from intent.cues import CUE_NAMES, cue_flags
from intent.features import (
    CHAR_NGRAM_CHARS,
    CONTEXT_MESSAGES,
    FEATURE_CACHE,
    FILLERS,
    PAIR_NAMES,
    PREV_USER_CUES,
    ROLES,
    FloatArray,
    message_shape,
    task_view,
)
from intent.text import (
    TOOL_EVENTS,
    WordMemo,
    content_stems,
    may_name_task,
    mentioned_ids,
    remember_tokens,
    scan_tokens,
    stems_of,
    tokens,
    tool_event,
    trigram_set,
    trigrams_of,
)

_EVENTS = (*TOOL_EVENTS, "other")
_PREV_ROLES = ("none", *ROLES)
_ONE_HOT_ROLE = {r: [float(r == other) for other in ROLES] for r in ROLES}
_ONE_HOT_PREV_ROLE = {r: [float(r == other) for other in _PREV_ROLES] for r in _PREV_ROLES}
_ONE_HOT_EVENT = {e: [float(e == other) for other in _EVENTS] for e in _EVENTS}
_NO_EVENT = [0.0] * len(_EVENTS)
#: The PREV_USER_CUES flags out of all cue flags, as a tuple (an itemgetter of several indices).
_PREV_CUES_OF = itemgetter(*(CUE_NAMES.index(c) for c in PREV_USER_CUES))
_NO_CUES = [0.0] * len(CUE_NAMES)


class Turn:
    """What a decision needs from the message being decided on, scanned once (see the module doc)."""

    __slots__ = ("_tri", "common_tri", "head_toks", "role", "stems", "text", "toks")

    def __init__(self, message: ChatMessage) -> None:
        text = self.text = message.content
        self.role = message.role
        # scanned afresh, then remembered for the turns that will see this message as an earlier one
        self.toks = remember_tokens(text, scan_tokens(text))
        head = text[:CHAR_NGRAM_CHARS]
        #: tokens of the first CHAR_NGRAM_CHARS characters (character n-grams and trigrams use those)
        self.head_toks = self.toks if len(head) == len(text) else scan_tokens(head)
        self.stems = stems_of(self.toks)
        # remembered for the turns that will see this message in their context (never read for it)
        _EARLIER_STEMS.remember(text, self.stems)
        self._tri: frozenset[str] | None = None
        #: len(self.tri & trigrams) by a task's trigram set, for this decision only: dense_row
        #: counts them, pair_rows (on a user message, which compares the same sets) reads them
        #: (an intersection of trigram sets builds a set: ~7,000 instructions)
        self.common_tri: dict[frozenset[str], int] = {}

    @property
    def tri(self) -> frozenset[str]:
        """Trigrams of the message's head (trigram_set): made on first use, only turns with tasks need them."""
        if self._tri is None:
            self._tri = trigrams_of(self.head_toks)
            if self.head_toks is self.toks:  # those of the whole message: remembered as stems are
                _EARLIER_TRIGRAMS.remember(self.text, self._tri)
        return self._tri


class _Recent:
    """A bounded map, oldest entry out first: for values of earlier messages remembered from a turn.

    An OrderedDict drops its oldest entry in constant time (a dict's ``next(iter(d))`` walks over
    every slot deleted before it until the dict is next resized).
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.items: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def put(self, key: str, value: tuple[float, ...]) -> None:
        items = self.items
        items[key] = value
        if len(items) > self.bound:
            items.popitem(last=False)


#: Cues of user messages remembered from the turn they were decided on (they are the next turns'
#: previous user message).
_USER_CUES = _Recent(FEATURE_CACHE)


def _prev_user_cues(content: str) -> tuple[float, ...]:
    got = _USER_CUES.items.get(content)
    if got is None:
        got = tuple(cue_flags(content, PREV_USER_CUES))
        _USER_CUES.put(content, got)
    return got


def dense_row(transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], turn: Turn) -> list[float]:
    """:func:`~intent.features.dense_features` as a list (same values, same order)."""
    text, toks, role = turn.text, turn.toks, turn.role
    n_tasks = len(tasks)
    f: list[float] = [float(n_tasks == 0), float(n_tasks == 1), float(n_tasks == 2), float(n_tasks >= 3)]
    f += _ONE_HOT_ROLE.get(role) or [0.0] * len(ROLES)
    event = tool_event(text) if role == "tool" else None
    f += _NO_EVENT if event is None else _ONE_HOT_EVENT[event[1]]  # (tool_event gives one of _EVENTS)
    prev_role = transcript[-2].role if len(transcript) > 1 else "none"
    f += _ONE_HOT_PREV_ROLE.get(prev_role) or [0.0] * len(_PREV_ROLES)
    msg_stems = turn.stems
    n_stems = len(msg_stems)
    overlaps: list[float] = []
    open_ids: set[str] = set()
    best_tri = 0.0
    if tasks:  # (the message's trigrams are made only when there is a task to compare them with)
        msg_tri = turn.tri
        n_tri = len(msg_tri)
        # overlap() and dice() of intent.text, inlined (same operations, so the same floats), in one
        # loop over the tasks: no comprehension per value (a function object and a frame each). The
        # best dice is kept as max() keeps it (a value is never negative, so 0.0 to start is max()'s
        # default)
        for t in tasks:
            t_stems, t_tri, _ = task_view(t.summary, t.last_update)
            open_ids.add(t.id.lower())
            if n_stems:
                overlaps.append(len(msg_stems & t_stems) / n_stems)
            if n_tri and t_tri:
                common = turn.common_tri[t_tri] = len(msg_tri & t_tri)
                if (dice := 2 * common / (n_tri + len(t_tri))) > best_tri:
                    best_tri = dice
        if n_stems:
            overlaps.sort(reverse=True)
        else:
            overlaps = [0.0] * n_tasks
    f += [
        math.log1p(len(transcript)),
        math.log1p(len(toks)) / 3.0,
        *message_shape(text, len(toks)),
        overlaps[0] if overlaps else 0.0,
        overlaps[1] if len(overlaps) > 1 else 0.0,
        best_tri,
        float(bool(mentioned_ids(text) & open_ids)),
        float(event is not None and event[0] in open_ids),
        # ("assistant" among the roles of transcript[-3:-1], without a list: prev_role is [-2]'s)
        float(prev_role == "assistant" or (len(transcript) > 2 and transcript[-3].role == "assistant")),
        math.log1p(n_stems) / 2.0,
        sum(map(FILLERS.__contains__, toks)) / max(1, len(toks)),
    ]
    # cue lexicons describe what a *user* says; a callback's echoed task text must not fire them
    if role == "user":
        cues = cue_flags(text)
        f += cues
        # remembered for the next turns, where this message is the previous user message
        _USER_CUES.put(text, _PREV_CUES_OF(cues))
    else:
        f += _NO_CUES
    # a tool callback is decided on after the user's last words: their cues still matter
    prev_user = ""
    for m in islice(reversed(transcript), 1, None):
        if m.role == "user":
            prev_user = m.content
            break
    f += _prev_user_cues(prev_user)
    return f


def pair_rows(transcript: Sequence[ChatMessage], tasks: Sequence[TaskInfo], turn: Turn) -> FloatArray:
    """:func:`~intent.features.pair_features` (same values), one row per task."""
    if not tasks:
        return np.zeros((0, len(PAIR_NAMES)), dtype=np.float64)
    last = turn.text
    # a tool callback is decided on, but the user's words before it say which task matters
    msg = last
    common_tri: dict[frozenset[str], int] = {}
    if turn.role == "user":
        msg_stems, msg_tri, common_tri = turn.stems, turn.tri, turn.common_tri
    else:
        last_user = next((m.content for m in reversed(transcript) if m.role == "user"), None)
        msg = last if last_user is None else f"{last} {last_user}"
        msg_toks = scan_tokens(msg)
        msg_stems = stems_of(msg_toks)
        msg_tri = trigrams_of(msg_toks if len(msg) <= CHAR_NGRAM_CHARS else scan_tokens(msg[:CHAR_NGRAM_CHARS]))
    ctx_stems, ctx_tri = _context_view(transcript[-1 - CONTEXT_MESSAGES : -1])
    last_tool = next((m.content for m in reversed(transcript) if m.role == "tool"), "")
    tool_evt = tool_event(last_tool)
    prev_assistant = next((m.content for m in reversed(transcript[:-1]) if m.role == "assistant"), "")
    asst_stems = _EARLIER_STEMS[prev_assistant]
    lowered = msg.lower()
    kept: list[frozenset[str]] = []
    focus: list[frozenset[str]] = []
    for clause in clauses(lowered):
        # the whole message when it is one clause (lower-casing ASCII twice changes nothing)
        stems = msg_stems if clause == lowered and msg.isascii() else stems_of(scan_tokens(clause))
        (kept if keeps(clause) else focus).append(stems)
    in_msg = mentioned_ids(last)
    # the earlier messages' ids, remembered per message: a dict subscript each (lower-casing and
    # searching their joined text cost ~1,300 instructions per message)
    # (most messages name none: filter leaves out their empty sets in C before the union)
    in_transcript = in_msg.union(*filter(None, map(_EARLIER_IDS.__getitem__, [m.content for m in transcript[:-1]])))
    summary_in, task_in, task_tri, ctx_in, ctx_tri_col = [], [], [], [], []
    id_msg, id_tool, id_seen, asst_in, focus_in, kept_in = [], [], [], [], [], []
    tool_tid = tool_evt[0] if tool_evt is not None else None
    # overlap() and dice() of intent.text, inlined (same operations, so the same floats)
    n_msg, n_tri, n_ctx, n_ctx_tri, n_asst = len(msg_stems), len(msg_tri), len(ctx_stems), len(ctx_tri), len(asst_stems)
    for task in tasks:
        t_stems, t_tri, s_stems = task_view(task.summary, task.last_update)
        tid = task.id.lower()
        n_t_tri = len(t_tri)
        summary_in.append(len(msg_stems & s_stems) / n_msg if n_msg else 0.0)
        task_in.append(len(msg_stems & t_stems) / n_msg if n_msg else 0.0)
        if n_tri and n_t_tri:
            common = common_tri.get(t_tri)
            task_tri.append(2 * (len(msg_tri & t_tri) if common is None else common) / (n_tri + n_t_tri))
        else:
            task_tri.append(0.0)
        ctx_in.append(len(ctx_stems & t_stems) / n_ctx if n_ctx else 0.0)
        ctx_tri_col.append(2 * len(ctx_tri & t_tri) / (n_ctx_tri + n_t_tri) if n_ctx_tri and n_t_tri else 0.0)
        id_msg.append(float(tid in in_msg))
        id_tool.append(float(tool_tid == tid))
        id_seen.append(float(tid in in_transcript))
        asst_in.append(len(asst_stems & t_stems) / n_asst if n_asst else 0.0)
        focus_in.append(_best_share(focus, t_stems))
        kept_in.append(_best_share(kept, t_stems))
    # relative evidence and the split on whether the message names a task: as in pair_features
    best_overlap, best_tri, best_focus, best_ctx = max(task_in), max(task_tri), max(focus_in), max(ctx_in)
    ctx_gap = list(map(sub, ctx_in, repeat(best_ctx)))
    silent = float(best_overlap <= 0.0)
    spoken, quiet = repeat(1.0 - silent), repeat(silent)
    near_best = best_overlap - 1e-12
    # PAIR_NAMES order, column after column, in one flat list: one conversion to numpy. Each derived
    # column is the same operation on each value as pair_features' comprehension, mapped in C (a
    # comprehension is a function object and a frame per column; ``repeat`` gives the other operand)
    flat = [
        *summary_in,
        *task_in,
        *task_tri,
        *map(mul, ctx_in, spoken),
        *map(mul, ctx_tri_col, spoken),
        *map(float, map(ge, task_in, repeat(near_best))),
        *map(sub, task_in, repeat(best_overlap)),
        *map(sub, task_tri, repeat(best_tri)),
        *id_msg,
        *id_tool,
        *id_seen,
        *map(mul, asst_in, spoken),
        *focus_in,
        *kept_in,
        *map(sub, focus_in, repeat(best_focus)),
        *map(mul, ctx_gap, spoken),
        *map(mul, ctx_in, quiet),
        *map(mul, ctx_tri_col, quiet),
        *map(mul, ctx_gap, quiet),
        *map(mul, asst_in, quiet),
    ]
    # packed float64 bytes read by np.frombuffer: np.array finds the list's type and converts each
    # float on its own, at several times the cost (the array is read-only, as nothing writes to it)
    return np.frombuffer(struct.pack(f"{len(flat)}d", *flat), np.float64).reshape(len(PAIR_NAMES), len(tasks)).T


def _best_share(clause_stems: list[frozenset[str]], t_stems: frozenset[str]) -> float:
    """The largest overlap() of a clause's stems with a task's (0 without clauses).

    Most messages are one clause and keep no task: no generator for none or one clause (max() of
    one value is that value).
    """
    if not clause_stems:
        return 0.0
    if len(clause_stems) == 1:
        c = clause_stems[0]
        return len(c & t_stems) / len(c) if c else 0.0
    return max((len(c & t_stems) / len(c) if c else 0.0 for c in clause_stems), default=0.0)


def _context_view(context: Sequence[ChatMessage]) -> tuple[frozenset[str], frozenset[str]]:
    """content_stems and trigram_set of the context as pair_features joins it (last CHAR_NGRAM_CHARS
    characters for trigrams), from the messages' own (cached: they are earlier messages).

    Joining with spaces keeps every message's tokens (lower-casing works per character but for the
    final sigma, which a space ends either way) unless a task id forms across a join: one message
    ends with "task" (or "taſk", which the pattern's IGNORECASE reads as it) and the next starts with
    a digit; or a dangling "-" (a token only at the very end of a text) is followed by the next
    message. trigram_set re-tokenises the content words joined by spaces: across messages, an id can
    also form there from a token that ends with "task" (a word between it and a number dropped), so
    the trigrams of such a context are those of its joined text. (Callbacks, "[task-3 progress] ...",
    name ids in most contexts: the ids within a message are in its own tokens, "taskid".)
    """
    contents = [m.content for m in context]
    ctx = " ".join(contents)
    named = may_name_task(ctx.lower())
    # (a text's last token is a dangling "-" exactly when it ends in "-" but for whitespace: only
    # "-(?=\s*$)" makes a "-" token, and \s is what str.rstrip strips)
    if (named and _joins_may_name_task(contents)) or ("-" in ctx and _dangles(contents[:-1])):
        return content_stems(ctx), trigram_set(ctx[-CHAR_NGRAM_CHARS:])
    stems = frozenset().union(*map(_EARLIER_STEMS.__getitem__, contents))
    if len(ctx) > CHAR_NGRAM_CHARS or (named and _ends_task_token(contents[:-1])):
        return stems, trigram_set(ctx[-CHAR_NGRAM_CHARS:])
    return stems, frozenset().union(*map(_EARLIER_TRIGRAMS.__getitem__, contents))


def _joins_may_name_task(contents: list[str]) -> bool:
    """Whether a task id may form where ``contents`` are joined by spaces (see _context_view)."""
    # (plain loops, here and below: a context is a few messages, and a generator costs more than
    # the tests)
    for a, b in pairwise(contents):  # noqa: SIM110
        if b[:1].isdigit() and may_name_task(a.lower()):
            return True
    return False


def _dangles(contents: list[str]) -> bool:
    """Whether one of ``contents`` ends in "-" but for whitespace (see _context_view)."""
    for c in contents:  # noqa: SIM110
        if c.rstrip().endswith("-"):
            return True
    return False


def _ends_task_token(contents: list[str]) -> bool:
    """Whether a token of one of ``contents`` ends with "task" (see _context_view)."""
    for c in contents:  # noqa: SIM110
        if "task " in f"{' '.join(tokens(c))} ":
            return True
    return False


def _ids_of(content: str) -> frozenset[str]:
    ids = mentioned_ids(content)
    return frozenset(ids) if ids else _NO_IDS


#: The ids of most messages: one object (the collector has one fewer container per message to scan).
_NO_IDS: frozenset[str] = frozenset()


#: Task ids named in a message before the last one (it is rescanned every later turn), by message:
#: a dict read by subscript (see WordMemo; four times FEATURE_CACHE: the orchestrator benchmark's
#: 200 conversations of 50 messages are 10,000 earlier messages).
_EARLIER_IDS = WordMemo(_ids_of, 4 * FEATURE_CACHE)


def _trigrams_of_text(content: str) -> frozenset[str]:
    return trigrams_of(tokens(content))


def _stems_of_text(content: str) -> frozenset[str]:
    return stems_of(tokens(content))


#: Content stems and trigrams (trigram_set) of messages before the last one, by message: a message is
#: in the context for several turns. Each Turn stores its own (it was scanned once: the lru_cache of
#: content_stems, which other callers use, cannot be given a value), so a context's user messages
#: are not scanned again; dicts read by subscript (see WordMemo), ~300 instructions less than a hit
#: of an lru_cache.
_EARLIER_STEMS = WordMemo(_stems_of_text, FEATURE_CACHE)
_EARLIER_TRIGRAMS = WordMemo(_trigrams_of_text, FEATURE_CACHE)
