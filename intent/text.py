"""Text normalisation shared by the embedded tier's training and inference (one implementation for both).

Everything here is pure Python over short strings and deterministic, so the terms a model was trained on
are exactly the terms it sees at inference.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

_V = TypeVar("_V")

_TASK_ID = re.compile(r"\btask[-_ ]?\d+\b", re.IGNORECASE)
#: _TASK_ID on lower-cased text without "ſ", where IGNORECASE can only match "task" itself: a pattern
#: that starts with the literal lets ``re`` skip to each "task" (one that starts with ``\b`` is tried at
#: every position). The lookbehind is the leading ``\b``: "t" is a word character, so a boundary before
#: it means no word character before it. ``tests/test_turn_features.py`` checks the two agree.
_TASK_ID_LOWER = re.compile(r"task(?<!\wtask)[-_ ]?\d+\b")
#: Deletes the separators a task id may have ("task-9", "task_9", "task 9" -> "task9").
_NO_ID_SEPARATOR = str.maketrans("", "", "-_ ")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[?!]|\.\.\.|…|—|–|-(?=\s*$)|[$€£%]|[\U0001F300-\U0001FAFF]")
#: A byte table for _ascii_tokens: the characters that can be in a token of ASCII text without "..."
#: ([a-z0-9], "'" and ``?!$%``) to themselves, every other one to a space. ("-" too: see there.)
_SEPARATORS = bytes(c if chr(c) in "abcdefghijklmnopqrstuvwxyz0123456789'?!$%" else 32 for c in range(256))
#: An apostrophe that does not sit inside one ``[a-z0-9]+'[a-z]+`` token: nothing of [a-z0-9] before
#: it, no letter after it, or its letters run into a digit or another apostrophe. (It starts with its
#: literal, so ``re`` jumps to each apostrophe.)
_ODD_APOSTROPHE = re.compile(r"'(?:(?<![a-z0-9]')|(?![a-z])|[a-z]*[0-9'])")
_TOOL_EVENT = re.compile(r"^\s*\[\s*(task[-_ ]?\d+)\s+([a-z_]+)\s*\]", re.IGNORECASE)
_DISFLUENCY = re.compile(r"\b(?:u+h+m*|u+m+|e+r+m*|hmm+|mm+-?hm+|uh-huh)\b[,.]?\s*", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
#: What every _DISFLUENCY match starts with: a word's first two letters (uu, uh, um, ee, er, hm or mm,
#: any case). A search for this is cheap (``re`` skips to the letters of its leading class); the
#: case-insensitive pattern, which starts with ``\b``, is tried at every position of the text.
#: ``tests/test_turn_features.py`` checks the classes hold every character IGNORECASE equates with them.
_DISFLUENCY_START = re.compile(r"[uUeEhHmM](?<!\w.)(?:(?<=[uU])[uUhHmM]|(?<=[eE])[eErR]|(?<=[hHmM])[mM])")
#: A byte table: every ASCII character but lower-case word characters (``\w``) to a space.
_WORDS_ONLY = bytes(c if chr(c).islower() or chr(c).isdigit() or c == ord("_") else 32 for c in range(256))

#: Function words ignored when comparing a message with a task (they say nothing about which task).
_STOPWORDS_TEXT = """
a an the and or but if so to of in on at for from by with about as into over after before is are was
were be been being am do does did done have has had having it its this that these those there here i
me my mine we us our you your he she him her his they them their what which who whom whose when
where why how can could would should will shall may might must just also too very really please pls
plz ok okay yes no not dont don't can't cant won't wont hey hi hello thanks thank thx ty uh um er
like yeah yep hmm now then still already again any some all one get got go going make want need let
lets let's know think see look thing things stuff bit actually maybe well oh right sure
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

TOOL_EVENTS = ("progress", "completed", "failed", "started")


def normalise(text: str) -> str:
    """Lower-case, with task ids folded to one placeholder token (ids differ per conversation)."""
    lowered = text.lower()
    if not may_name_task(lowered):
        return lowered
    return (_TASK_ID if "ſ" in lowered else _TASK_ID_LOWER).sub(" taskid ", lowered)


def scan_tokens(text: str) -> tuple[str, ...]:
    """Word and salient punctuation tokens of ``text`` (after :func:`normalise`), computed afresh.

    The tokens are ``_TOKEN.findall`` of the normalised text (the definition). The inference fast path
    scans the message being decided on with this (never from a cache keyed by its text, which would
    flatter benchmarks that repeat short messages).
    """
    lowered = normalise(text)
    if lowered.isascii() and "..." not in lowered:
        found = _ascii_tokens(lowered)
        if found is not None:
            return found
    return tuple(_TOKEN.findall(lowered))


def _ascii_tokens(lowered: str) -> tuple[str, ...] | None:
    """_TOKEN.findall of lower-cased ASCII text without "...", by C string methods (None: use it).

    ``re`` calls its matcher once per token and tries every alternative at every character between
    them; a message costs ~30k instructions that way, a third of it this way. In such text a token is
    a run of [a-z0-9] (with "'letters" glued on), one of ``?!$%``, or a "-" followed only by
    whitespace: every other character separates tokens and becomes a space, ``?!$%`` get a space on
    each side, and ``str.split`` cuts the rest. An apostrophe keeps its run together only as
    ``[a-z0-9]+'[a-z]+`` followed by a separator; any other apostrophe (see _ODD_APOSTROPHE) returns
    None. A "-" is a token only as the text's last non-space character (``-(?=\\s*$)``; the regex's
    ``\\s`` and ``str.rstrip`` strip the same characters), after every other token.
    """
    spaced = lowered.encode().translate(_SEPARATORS).decode()
    # (str, not bytes, membership tests: ``b"?" in some_bytes`` first tries "?" as an int and raises)
    if "'" in spaced and _ODD_APOSTROPHE.search(spaced) is not None:
        return None
    if "?" in spaced:
        spaced = spaced.replace("?", " ? ")
    if "!" in spaced:
        spaced = spaced.replace("!", " ! ")
    if "$" in spaced:
        spaced = spaced.replace("$", " $ ")
    if "%" in spaced:
        spaced = spaced.replace("%", " % ")
    if lowered.rstrip().endswith("-"):
        return (*spaced.split(), "-")
    return tuple(spaced.split())


#: Bound of the token store below.
TOKEN_CACHE = 4096
#: Bound of the per-word memos (see WordMemo).
WORD_MEMO = 65536
#: An OrderedDict, not a dict: dropping a dict's oldest key with ``next(iter(d))`` walks over every
#: slot deleted before it until the next resize (~25k instructions per decision when full).
_TOKENS: OrderedDict[str, tuple[str, ...]] = OrderedDict()


def tokens(text: str) -> tuple[str, ...]:
    """:func:`scan_tokens`, remembered (texts of tasks and of earlier messages repeat turn after turn)."""
    got = _TOKENS.get(text)
    return remember_tokens(text, scan_tokens(text)) if got is None else got


def remember_tokens(text: str, toks: tuple[str, ...]) -> tuple[str, ...]:
    """Store ``toks`` as the tokens of ``text`` (oldest entry out first past :data:`TOKEN_CACHE`).

    The inference fast path stores the message it decides on, scanned afresh, for the later turns
    that see it as an earlier message.
    """
    _TOKENS[text] = toks
    if len(_TOKENS) > TOKEN_CACHE:
        _TOKENS.popitem(last=False)
    return toks


class WordMemo(dict[str, _V]):
    """A bounded memo of a function of one word (or other short key): ``memo[word]`` is its value.

    A lookup is a dict subscript in C, ``map(memo.__getitem__, words)`` over a message's words: ~300
    fewer instructions per word than a hit of an ``lru_cache``-wrapped function, which a decision
    makes a few dozen of. A miss computes the value (``__missing__``); past ``bound`` entries the memo
    starts over empty (words recur across messages: it refills with those in use).
    """

    __slots__ = ("_bound", "_compute")

    def __init__(self, compute: Callable[[str], _V], bound: int) -> None:
        super().__init__()
        self._compute = compute
        self._bound = bound

    def __missing__(self, key: str) -> _V:
        if len(self) >= self._bound:
            self.clear()
        value = self[key] = self._compute(key)
        return value

    def remember(self, key: str, value: _V) -> None:
        """Store ``value`` as the value of ``key`` (one computed elsewhere), within the bound."""
        if len(self) >= self._bound:
            self.clear()
        self[key] = value


def word_ngrams(text: str, prefix: str = "w:") -> list[str]:
    """Unigrams and bigrams with start/end markers (``</s>`` after a dangling word marks a cut-off)."""
    return ngrams_of(tokens(text), prefix)


def ngrams_of(toks: tuple[str, ...], prefix: str = "w:") -> list[str]:
    """:func:`word_ngrams` of a text whose :func:`tokens` are ``toks``."""
    grams = [prefix + t for t in toks]
    grams += [f"{prefix}{a} {b}" for a, b in itertools.pairwise(("<s>", *toks, "</s>"))]
    return grams


def char_ngrams(text: str, lo: int = 3, hi: int = 5, prefix: str = "c:") -> list[str]:
    """Character n-grams inside word boundaries (robust to typos, slang and inflection)."""
    out: list[str] = []
    for word in tokens(text):
        padded = f" {word} "
        n_chars = len(padded)
        for n in range(lo, hi + 1):
            if n > n_chars:
                break
            out.extend(prefix + padded[i : i + n] for i in range(n_chars - n + 1))
    return out


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude suffix-stripping stem, enough to match "booking"/"booked"/"book"."""
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ied", "ers", "er", "ed", "es", "ly", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:6]


@lru_cache(maxsize=4096)
def content_stems(text: str) -> frozenset[str]:
    """Stems of the content words of ``text`` (no stopwords, no punctuation)."""
    return stems_of(tokens(text))


def stems_of(toks: tuple[str, ...]) -> frozenset[str]:
    """:func:`content_stems` of a text whose :func:`tokens` are ``toks``."""
    stems = set(map(_CONTENT_STEMS.__getitem__, toks))
    stems.discard("")
    return frozenset(stems)


def _content_stem(token: str) -> str:
    """The stem of a content word, "" for anything else (a stem is never empty)."""
    return stem(token) if token[0].isalnum() and token not in STOPWORDS and token != "taskid" else ""


#: _content_stem by word
_CONTENT_STEMS = WordMemo(_content_stem, WORD_MEMO)


@lru_cache(maxsize=4096)
def trigram_set(text: str) -> frozenset[str]:
    return frozenset(char_ngrams(" ".join(t for t in tokens(text) if t not in STOPWORDS), 3, 3, ""))


def trigrams_of(toks: tuple[str, ...]) -> frozenset[str]:
    """:func:`trigram_set` of a text whose :func:`tokens` are ``toks``, from per-word trigram sets.

    trigram_set re-tokenises the content words joined by spaces; that gives the same words back
    unless a task id forms across the join ("task" then a number once a word between them is
    dropped), so any word containing "task" takes the exact path.
    """
    if "task" in " ".join(toks):  # (tokens hold no spaces: only a token can contain "task")
        return frozenset(char_ngrams(" ".join(t for t in toks if t not in STOPWORDS), 3, 3, ""))
    return frozenset().union(*map(_WORD_TRIGRAMS.__getitem__, toks))


def _word_trigrams(word: str) -> frozenset[str]:
    """Trigrams of " word " (none for a stopword: trigram_set leaves those out)."""
    if word in STOPWORDS:
        return frozenset()
    padded = f" {word} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


#: _word_trigrams by word
_WORD_TRIGRAMS = WordMemo(_word_trigrams, WORD_MEMO)


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Share of ``a`` found in ``b`` (0 when ``a`` is empty)."""
    return len(a & b) / len(a) if a else 0.0


def dice(a: frozenset[str], b: frozenset[str]) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def tool_event(content: str) -> tuple[str, str] | None:
    """``(task id, event)`` of a task callback like ``[task-9 progress] ...``, else None."""
    m = _TOOL_EVENT.match(content)
    if m is None:
        return None
    task_id = re.sub(r"[_ ]", "-", m.group(1).lower())
    event = m.group(2).lower()
    return task_id, event if event in TOOL_EVENTS else "other"


def mentioned_ids(text: str) -> set[str]:
    """Task ids written in ``text`` (``task-9``, ``task 9``), in their canonical ``task-N`` form."""
    lowered = text.lower()
    if not may_name_task(lowered):  # most messages name no task: no regex
        return set()
    return ids_in_lowered(lowered)


def ids_in_lowered(lowered: str) -> set[str]:
    """:func:`mentioned_ids` of lower-cased text.

    Texts joined by newlines (never part of an id, and a non-word character as the ends of a text
    are to ``\\b``) name the ids that the texts name one by one.
    """
    found = (_TASK_ID if "ſ" in lowered else _TASK_ID_LOWER).findall(lowered)
    return {m.translate(_NO_ID_SEPARATOR).replace("task", "task-") for m in found}


def may_name_task(lowered: str) -> bool:
    """Whether lower-cased text can contain a task id (False: :data:`_TASK_ID` cannot match in it).

    The pattern is case-insensitive on lower-cased text, where it can only match "task", or "ſ" (the
    long s, which IGNORECASE equates with "s"); the Kelvin sign is already "k" once lower-cased.
    """
    return "task" in lowered or "ſ" in lowered


def _may_repeat(lowered: str) -> bool:
    """Whether _REPEAT can match in lower-cased ASCII text (False: it cannot).

    A match is a word ``w`` (a run of word characters after a non-word one), whitespace, then ``w``
    again (ASCII letters compared without case). With every other character made a space, ``w`` is
    then one of the text's words and the next word starts with it. (The test is looser than the
    pattern, never stricter; bytes and C loops: no Python loop over the words or characters.)
    """
    words = lowered.encode("ascii").translate(_WORDS_ONLY).split()
    return any(map(bytes.startswith, words[1:], words))


def clean_utterance(text: str, limit: int = 280) -> str:
    """A user message made presentable as an explanation: disfluencies and stutters out, first letter up."""
    # each substitution only where it can match (both are rare; the patterns cost ~50k instructions each)
    cleaned = _DISFLUENCY.sub("", text) if _DISFLUENCY_START.search(text) else text
    if not cleaned.isascii() or _may_repeat(cleaned.lower()):
        cleaned = _REPEAT.sub(r"\1", cleaned)
    # whitespace runs to one space: str.split() and the regex \s both use Python's isspace, and the
    # ends' spaces are stripped anyway (a third of this function's instructions as re.sub(r"\s+", " "))
    cleaned = " ".join(cleaned.split()).strip(" ,;-—–")
    if not cleaned:
        cleaned = text.strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned[:1].upper() + cleaned[1:]
