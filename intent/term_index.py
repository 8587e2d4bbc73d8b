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
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from intent.contract import ChatMessage
from intent.features import CONTEXT_MESSAGES, ROLE_TAG, FloatArray, IntArray, TfidfVocab
from intent.text import ngrams_of, scan_tokens, tokens, tool_event
from intent.turn_features import Turn

WORD_CACHE = 65_536
MESSAGE_CACHE = 4096


class TermIndex:
    """Maps a turn to (coefficient-row indices, l2-normalised TF-IDF values) of both sparse blocks.

    Indices of the context block are offset by ``len(msg_vocab)``: rows of the model's ``coef``.
    Rows are gathered in Python lists and counted with :class:`collections.Counter` (C code): numpy's
    per-call overhead on arrays of ~100 values cost more than that; numpy is used once the distinct
    rows are known.
    """

    def __init__(self, msg_vocab: TfidfVocab, ctx_vocab: TfidfVocab) -> None:
        self._msg = msg_vocab.index
        # character n-grams keyed without their "c:" prefix: no string concatenation per n-gram
        self._char = {t[2:]: i for t, i in msg_vocab.index.items() if t.startswith("c:")}
        offset = self._ctx_offset = len(msg_vocab)
        self._ctx = {t: i + offset for t, i in ctx_vocab.index.items()}
        self._idf = np.concatenate([msg_vocab.idf, ctx_vocab.idf])
        self._word_chars: Callable[[str], tuple[int, ...]] = lru_cache(maxsize=WORD_CACHE)(self._char_rows)
        self._context_rows: Callable[[str, str], tuple[int, ...]] = lru_cache(maxsize=MESSAGE_CACHE)(
            self._message_context_rows
        )

    def encode(self, transcript: Sequence[ChatMessage], turn: Turn | None = None) -> tuple[IntArray, FloatArray]:
        """Distinct rows and l2-normalised TF-IDF values of [message block | context block].

        ``turn`` is the last message's scan (made here if not given). Rows come in no set order (the
        caller dots them with coefficient rows); each block is normalised on its own.
        """
        last = Turn(transcript[-1]) if turn is None else turn
        msg_rows, ctx_rows = self.message_rows(last), self.context_rows(transcript)
        in_msg, in_ctx = Counter(msg_rows), Counter(ctx_rows)
        n_msg = len(in_msg)
        rows = np.array([*in_msg, *in_ctx], dtype=np.int64)
        vals = self._idf.take(rows)
        if rows.size < len(msg_rows) + len(ctx_rows):  # sublinear tf for repeats: 1 + log(count)
            vals *= 1.0 + np.log(np.array([*in_msg.values(), *in_ctx.values()], dtype=np.float64))
        for block in (vals[:n_msg], vals[n_msg:]):
            if block.size:
                block /= math.sqrt(float(block @ block))
        return rows, vals

    def message_rows(self, turn: Turn) -> list[int]:
        """Vocabulary rows of :func:`~intent.features.message_terms` (with repeats, in no set order)."""
        get = self._msg.get
        text = turn.text
        if turn.role == "tool":
            event = tool_event(text)
            body = text.split("]", 1)[-1] if event is not None else text
            terms = [f"tool_event={event[1] if event else 'none'}", *ngrams_of(scan_tokens(body), prefix="tw:")]
            return [i for i in map(get, terms) if i is not None]
        rows = [i for i in map(get, ngrams_of(turn.toks)) if i is not None]
        for word_rows in map(self._word_chars, turn.head_toks):
            rows += word_rows
        return rows

    def context_rows(self, transcript: Sequence[ChatMessage]) -> list[int]:
        """Offset vocabulary rows of :func:`~intent.features.context_terms` (with repeats)."""
        rows: list[int] = []
        for m in transcript[-1 - CONTEXT_MESSAGES : -1]:
            rows += self._context_rows(m.role, m.content)
        return rows

    def _char_rows(self, word: str) -> tuple[int, ...]:
        # the n-grams char_ngrams(word) yields (3 to 5 characters of " word "), found in the vocabulary
        get = self._char.get
        padded = f" {word} "
        width = len(padded)
        grams = (padded[i : i + n] for n in range(3, min(5, width) + 1) for i in range(width - n + 1))
        return tuple(i for i in map(get, grams) if i is not None)

    def _message_context_rows(self, role: str, content: str) -> tuple[int, ...]:
        tag = ROLE_TAG.get(role, "x:")
        event = tool_event(content) if role == "tool" else None
        terms = [f"{tag}event={event[1]}"] if event is not None else []
        terms += [tag + t for t in tokens(content)]
        get = self._ctx.get
        return tuple(i for i in map(get, terms) if i is not None)
