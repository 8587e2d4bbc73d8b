"""The TF-IDF blocks of a turn as coefficient-row indices: the embedded tier's inference fast path.

Training builds the sparse blocks from term strings (:func:`~intent.features.message_terms` and
:func:`~intent.features.context_terms`, then :meth:`~intent.features.TfidfVocab.transform`). Done per
decision, that builds a few hundred strings (mostly character n-grams) and a dozen numpy calls on
arrays of ~100 values, where numpy's per-call overhead dominates. :class:`TermIndex` goes from the
turn's tokens straight to vocabulary indices, with bounded caches for what repeats in a conversation:

* the character n-grams of a *word* (words recur across messages; the cache is keyed by the word);
* the context terms of a message *before* the last one (it was the last message one turn earlier).

The message being decided on is always featurised afresh. The result must equal the training path's
numbers; ``tests/test_embedded.py`` checks it on every dataset row.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import pairwise, repeat

import numpy as np

from intent.contract import ChatMessage
from intent.features import CONTEXT_MESSAGES, ROLE_TAG, FloatArray, IntArray, TfidfVocab
from intent.text import WordMemo, scan_tokens, tokens, tool_event
from intent.turn_features import Turn

WORD_CACHE = 65_536
#: The tag context_terms gives a message of another role.
_OTHER_TAG = "x:"
MESSAGE_CACHE = 4096
#: The row below every row, packed (the encoding's start sentinel).
_BELOW = struct.pack("q", -1)
#: Rows per turn up to which encode looks sublinear_tf up in a table (more: it computes it).
TF_TABLE = 4096


class TermIndex:
    """Maps a turn to (coefficient-row indices, l2-normalised TF-IDF values) of both sparse blocks.

    Indices of the context block are offset by ``len(msg_vocab)``: rows of the model's ``coef``.
    Rows are gathered as packed int64 bytes (the caches' per-word and per-message entries are bytes)
    and go to numpy once, joined, through ``np.frombuffer``: numpy's per-call overhead, not arithmetic,
    is the cost at this size, and converting Python ints one by one (``np.fromiter``) cost ~240
    instructions per row.
    """

    def __init__(self, msg_vocab: TfidfVocab, ctx_vocab: TfidfVocab) -> None:
        # Each term's row as packed int64 bytes (what the encoding joins), and a term not in the
        # vocabulary as b"" (``get(term, b"")``): a message's rows are one b"".join over a map in C,
        # with no Python-level test per term for a missing one and no struct.pack per message.
        # Terms keyed without their prefix ("c:", "w:", "tw:", a role tag): looking up a token or a
        # word pair needs no string concatenation per term. Within one prefix the keys stand for the
        # same terms.
        msg = self._msg = _as_bytes(msg_vocab.index)
        self._char = _unprefixed(msg, "c:")
        self._word = _unprefixed(msg, "w:")
        self._tool_word = _unprefixed(msg, "tw:")
        offset = self._ctx_offset = len(msg_vocab)
        ctx = _as_bytes({t: i + offset for t, i in ctx_vocab.index.items()})
        self._ctx_by_tag = {tag: _unprefixed(ctx, tag) for tag in {*ROLE_TAG.values(), _OTHER_TAG}}
        #: the default of every lookup, as map()'s second iterable (it never runs out)
        self._nothing = repeat(b"")
        self._idf = np.concatenate([msg_vocab.idf, ctx_vocab.idf])
        self._past = _packed([self._idf.size])  # a row past every row (the encoding's end sentinel)
        #: sublinear_tf of every count below TF_TABLE, by count (at 0: nan, never looked up)
        self._tf = np.concatenate([[math.nan], sublinear_tf(np.arange(1, TF_TABLE))])
        self._word_chars = WordMemo(self._char_rows, WORD_CACHE)
        self._context_rows: Callable[[str, str], bytes] = lru_cache(maxsize=MESSAGE_CACHE)(self._message_context_rows)

    def encode(self, transcript: Sequence[ChatMessage], turn: Turn | None = None) -> tuple[IntArray, FloatArray]:
        """Distinct rows and l2-normalised TF-IDF values of [message block | context block].

        ``turn`` is the last message's scan (made here if not given). The blocks' rows are disjoint
        (context rows are offset); each block is normalised on its own.
        """
        last = Turn(transcript[-1]) if turn is None else turn
        # One sort finds the repeated terms and leaves the message block (lower rows) first. Two
        # sentinels, -1 (sorts first) and one past every row (sorts last), make "starts a run of
        # equal rows" one comparison of two views, and every run's length a difference of starts:
        # at ~100 rows, numpy's per-call overhead is the cost, so fewer calls is less time.
        listed = b"".join([_BELOW, *self.message_rows(last), *self.context_rows(transcript), self._past])
        n = len(listed) // 8 - 2
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        rows = np.frombuffer(bytearray(listed), np.int64)  # (writable: sorted in place, not by np.sort's wrapper)
        rows.sort()
        tail = rows[1:]
        first = tail != rows[:-1]  # n + 1 flags: the rows, then the end sentinel (always a start)
        unique = tail[first][:-1]
        vals = self._idf.take(unique)
        if unique.size < n:  # sublinear tf for repeated terms: 1 + log(count)
            starts = first.nonzero()[0]  # the last one is n, where the end sentinel is
            counts = starts[1:] - starts[:-1]
            # looked up (a count is at most n): a take instead of a float subtraction, a log and an add
            vals *= self._tf.take(counts) if n < self._tf.size else sublinear_tf(counts)
        split = int(unique.searchsorted(self._ctx_offset))
        for block in (vals[:split], vals[split:]):
            if block.size:
                # (ndarray.dot, not @: for two vectors both call numpy's DOUBLE_dot, the same BLAS
                # ddot, so the same float; dot skips the generalised ufunc's setup)
                block /= math.sqrt(float(block.dot(block)))
        return unique, vals

    def message_rows(self, turn: Turn) -> list[bytes]:
        """Vocabulary rows of :func:`~intent.features.message_terms` (with repeats, in no set order),
        packed: the parts of one join."""
        text, nothing = turn.text, self._nothing
        if turn.role == "tool":
            event = tool_event(text)
            body = text.split("]", 1)[-1] if event is not None else text
            # the event tag, then ngrams_of(tokens, prefix="tw:") unprefixed (as below)
            tool_word, toks = self._tool_word.get, scan_tokens(body)
            return [
                self._msg.get(f"tool_event={event[1] if event else 'none'}", b""),
                b"".join(map(tool_word, toks, nothing)),
                b"".join(map(tool_word, map(" ".join, pairwise(("<s>", *toks, "</s>"))), nothing)),
            ]
        # ngrams_of(turn.toks) ("w:" unigrams, then "w:a b" pairs with <s>/</s> markers), unprefixed
        word, toks = self._word.get, turn.toks
        return [
            b"".join(map(word, toks, nothing)),
            b"".join(map(word, map(" ".join, pairwise(("<s>", *toks, "</s>"))), nothing)),
            *map(self._word_chars.__getitem__, turn.head_toks),
        ]

    def context_rows(self, transcript: Sequence[ChatMessage]) -> list[bytes]:
        """Offset vocabulary rows of :func:`~intent.features.context_terms` (with repeats), packed."""
        return [self._context_rows(m.role, m.content) for m in transcript[-1 - CONTEXT_MESSAGES : -1]]

    def _char_rows(self, word: str) -> bytes:
        # the n-grams char_ngrams(word) yields (3 to 5 characters of " word "), found in the vocabulary
        # (each n's grams are slices made in C: map(slice) of the starts and ends, none past the end)
        get, cut, nothing = self._char.get, f" {word} ".__getitem__, self._nothing
        width = len(word) + 2
        return b"".join(
            [
                b"".join(map(get, map(cut, map(slice, range(width - n + 1), range(n, width + 1))), nothing))
                for n in (3, 4, 5)
            ]
        )

    def _message_context_rows(self, role: str, content: str) -> bytes:
        # context_terms' terms of one message, looked up without their role tag
        get = self._ctx_by_tag[ROLE_TAG.get(role, _OTHER_TAG)].get
        rows = b"".join(map(get, tokens(content), self._nothing))
        event = tool_event(content) if role == "tool" else None
        return rows if event is None else rows + get(f"event={event[1]}", b"")


def sublinear_tf(counts: IntArray) -> FloatArray:
    """``1 + log(count)`` per count, as :meth:`~intent.features.TfidfVocab.transform` computes it.

    numpy's log maps each element on its own (the same float for a count wherever it is in an array),
    so a table of it, made once, gives the floats a call on the counts gives.
    """
    return 1.0 + np.log(counts.astype(np.float64))


def _packed(rows: list[int]) -> bytes:
    """``rows`` as native int64 bytes (what ``np.frombuffer(..., np.int64)`` reads back)."""
    return struct.pack(f"{len(rows)}q", *rows)


def _as_bytes(index: dict[str, int]) -> dict[str, bytes]:
    """``index`` with each row as packed int64 bytes (see _packed)."""
    return {t: _packed([i]) for t, i in index.items()}


def _unprefixed(index: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    """The entries of ``index`` whose term starts with ``prefix``, keyed by the rest of the term."""
    cut = len(prefix)
    return {t[cut:]: i for t, i in index.items() if t.startswith(prefix)}
