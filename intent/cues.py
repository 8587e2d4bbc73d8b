"""Generic cue lexicons of conversational intent, as binary features of the message being decided on.

TF-IDF learns words seen in training; these groups carry the same signal to phrasings it has not seen
("call it off", "scrap that", "pull the plug" all fire ``cancel``). They are domain-independent on
purpose: no task nouns, only the verbs, particles and shapes people use to cancel, change, ask, thank,
chat or address someone else.

:data:`CUES` holds the definitions (case-insensitive regexes). :func:`cue_flags` computes the same flags
faster (see "Fast path" below); ``tests/test_cues.py`` checks the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

_FLAGS = re.IGNORECASE

#: Each group's regex, as its top-level alternatives (the pattern is them joined with "|").
_SOURCES: dict[str, tuple[str, ...]] = {
    "cancel": (
        r"\b(?:cancel\w*|forget (?:it|about|the|that|my)|never ?mind|stop\b|drop (?:it|the|that)|don'?t bother|"
        r"no need|no longer|not needed|(?:won'?t|don'?t|do not|will not) (?:need|require)|kill (?:it|the)|"
        r"call (?:it |the \w+ )?off|scrap|skip|abort|turn (?:it|that|the \w+) off|pull the plug|hold off|"
        r"we'?re good on|leave it|not (?:go|going) ahead|don'?t (?:go ahead|proceed)|withdraw|called off)",
    ),
    "change": (
        r"\b(?:instead|actually|make it|change|move (?:it|the)|switch|rather|swap|pushed|bump|only|also|too|"
        r"add|include|prefer|must|needs? to be|has to|have to be|should be|no more than|under|max(?:imum)?|"
        r"at least|not the|update|correction|typo|wrong|increase|reduce|up to|go up|go down)\b",
    ),
    "request": (
        r"\b(?:can (?:you|u)|could (?:you|u)|would (?:you|u)|will (?:you|u)|please|pls|plz|i need|we need|"
        r"need (?:you|a|an|to)|find|book|get (?:me|us)|order|send|set up|schedule|arrange|draft|check|look into|"
        r"sort out|organi[sz]e|buy|renew|submit|file|research|compare|contact|call|email|chase|reserve|hire|"
        r"write|prepare|pull together|put together|track|request)\b",
    ),
    "question": (
        r"^\W*(?:(?:so|and|ok|okay|um|uh|hey|hi|wait|oh)\W+)*(?:what|when|where|who|which|why|how|is|are|was|"
        r"were|did|does|do|has|have|any|whats|what's|where's|when's|how's)\b",
    ),
    "status": (
        r"\b(?:status|update on|how'?s (?:the|my|it)|how is|any news|news on|progress|where are we|is it done|"
        r"eta|yet\b|so far|heard back|confirmed|remind me)\b",
    ),
    "capability": (
        r"\b(?:can|could|do) (?:you|u) (?:even |actually |also |really )?\w+[^?]*\bor\b",
        r"what can (?:you|u) do",
        r"are (?:you|u) able",
        r"is that (?:out of scope|something you)",
        r"can (?:you|u) (?:even|actually)",
    ),
    "thanks": (
        r"^\W*(?:thanks|thank (?:you|u)|thx|ty|cheers|ok(?:ay)?|k+|cool|great|perfect|nice|awesome|got it|"
        r"sounds good|brilliant|lovely|noted|will do|sweet|ace)\b",
    ),
    "smalltalk": (
        r"\b(?:lol|lmao|haha\w*|how are (?:you|u)|happy (?:friday|monday|weekend)|good (?:morning|afternoon|"
        r"evening)|do (?:you|u) (?:ever|even) (?:sleep|eat)|whatcha|joke)\b",
        r"😂",
        r"🤣",
    ),
    "greeting_only": (
        r"^\W*(?:hi|hello|hey|hiya|heya|yo|morning|evening|good (?:morning|afternoon|evening|day))"
        r"(?: there| again| all)?"
        r"(?:\W+(?:good (?:morning|afternoon|evening|day)|how are (?:you|u)(?: doing)?(?: today)?|how'?s it going))?"
        r"\W*$",
    ),
    "addressee": (
        r"(?:^|\s)@\w+",
        r"^\W*(\w+)\W+\1\b",
        r"^\W*(?:babe|honey|hun|guys|mum|mom|dad|love|sweetie)\b",
    ),
    "urgent": (r"\b(?:asap|right now|urgent\w*|immediately|now!)", r"!!"),
    "dangling": (
        r"\b(?:the|a|an|to|for|with|and|or|of|my|our|at|in|on|from|about|like|so|but|that|was|is|if|um|uh)\W*$",
        r"[-—–]\s*$",
        r"\.\.\.\s*$",
        r"…\s*$",
    ),
}

CUES: dict[str, re.Pattern[str]] = {name: re.compile("|".join(alts), _FLAGS) for name, alts in _SOURCES.items()}

CUE_NAMES: tuple[str, ...] = tuple(CUES)

# ---- Fast path ------------------------------------------------------------------------------------
#
# Python's ``re`` tries a pattern that starts with ``\b`` at every position of the text, and a
# case-insensitive one compares lower-cased characters: twelve such searches were the largest part
# of a decision. Two rewrites give the same flags with much less work:
#
# 1. Lower-case the text and match case-sensitively (the patterns have no upper-case letters outside
#    escapes; a test checks). That is exactly IGNORECASE when lower-casing changes nothing but ASCII
#    letters (see _fast_path_safe); other text takes the definitions above.
# 2. A *word-led* alternative, ``\b`` then a match that always starts with a word character, matches
#    at position p iff p starts a word: p == 0 or text[p-1] is not a word character. Prefixing the
#    text with a space, that is "a non-word character, then the match": ``\W(?=X)``. All word-led
#    alternatives of all groups become one such pattern, whose first item is a character class, so
#    ``re`` skips through words instead of trying a match at each character. (Requires that X has no
#    ``^``/``\A`` and no lookbehind, which would see the added space; a test checks the shapes.)
#    At a position where groups' Xs match, the lookahead reports one of them (the first it tries); the
#    search then resumes there with the groups not found yet (see _word_led_hits).
# 3. In that pattern the ~160 alternatives of the groups' Xs (leading groups distributed:
#    "(?:a|b)c" is "ac|bc") are grouped by their first letter, which ``re`` compares before trying a
#    branch: at a word start it tries the few alternatives that begin with its letter, not all of them.
# 4. The word-led scan and the start-anchored tests are compiled with ``re.ASCII``: a Unicode ``\w``
#    or ``\W`` asks the Unicode database about each character (several calls per character), an ASCII
#    one reads a table. On text whose non-ASCII characters are all non-word characters (emoji,
#    dashes, curly quotes) ``\w``, ``\W`` and ``\b`` mean the same either way (see _fast_path_safe;
#    other text takes the definitions). The patterns compiled so use no other escape that ASCII
#    changes (``\s``, ``\d``: checked when they are compiled, see _ascii).


def _is_word_led(alternative: str) -> bool:
    return alternative.startswith(r"\b")


_WORD_LED: dict[str, str] = {name: alt[2:] for name, alts in _SOURCES.items() for alt in alts[:1] if _is_word_led(alt)}


def _structure(pattern: str) -> list[tuple[int, str]]:
    """Positions and characters of ``pattern`` that can open, close or split a group: escapes and
    character classes left out (the sources' classes hold no "]" but the closing one)."""
    found, at = [], 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\":
            at += 2
        elif char == "[":
            at = pattern.index("]", at + 2) + 1
        else:
            if char in "()|":
                found.append((at, char))
            at += 1
    return found


def _group_end(pattern: str) -> int:
    """Index of the ")" that closes the group opened at ``pattern[0]``."""
    depth = 0
    for at, char in _structure(pattern):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return at
    raise ValueError(f"unbalanced group in {pattern!r}")


def _top_level(pattern: str) -> list[str]:
    """``pattern``'s alternatives: split at each "|" outside groups."""
    parts, depth, start = [], 0, 0
    for at, char in _structure(pattern):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "|" and depth == 0:
            parts.append(pattern[start:at])
            start = at + 1
    return [*parts, pattern[start:]]


def _alternatives(pattern: str) -> list[str]:
    """``pattern`` as alternatives that each start with a literal, leading groups distributed.

    "(?:a|b)c" matches at a position iff "ac" or "bc" does. Only a group without a quantifier after
    it is distributed; anything else is refused (the sources are checked at import).
    """
    if not pattern.startswith("(?:"):
        if not pattern[:1].isalnum() or pattern[1:2] in ("?", "*", "+", "{"):
            raise ValueError(f"word-led alternative {pattern!r} does not start with a literal")
        return [pattern]
    end = _group_end(pattern)
    rest = pattern[end + 1 :]
    if rest[:1] in ("?", "*", "+", "{"):
        raise ValueError(f"cannot distribute a quantified group in {pattern!r}")
    return [alt for part in _top_level(pattern[3:end]) for alt in _alternatives(part + rest)]


#: Each word-led group's X as alternatives that start with a literal word character.
_LED_ALTERNATIVES = {name: _alternatives(body) for name, body in _WORD_LED.items()}
#: The cue group of each alternative's marker group (see _any_word_led).
_GROUP_OF_MARKER = {f"{name}_{i}": name for name, alts in _LED_ALTERNATIVES.items() for i in range(len(alts))}


def _ascii(pattern: str) -> re.Pattern[str]:
    r"""``pattern`` compiled with ``re.ASCII``, refused if it holds an escape other than ``\b``, ``\w``
    and ``\W`` (``\s``, ``\d`` and the like would differ from their Unicode meaning on ASCII text
    too: Unicode ``\s`` holds "\x1c"-"\x1f")."""
    escapes = set(re.findall(r"\\[a-zA-Z]", pattern)) - {r"\b", r"\w", r"\W"}
    if escapes:
        raise ValueError(f"cannot match {sorted(escapes)} as ASCII in {pattern!r}")
    return re.compile(pattern, re.ASCII)


@lru_cache(maxsize=1 << len(_WORD_LED))  # every set of groups
def _any_word_led(names: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for the word-led alternatives of ``names`` (compiled once per set of groups).

    The alternatives are grouped by their first letter. Each one ends with an empty group that names
    it (``m.lastgroup``, mapped by _GROUP_OF_MARKER): a group in front of it would hide its first
    letter from the comparison ``re`` makes before trying a branch.
    """
    by_first: dict[str, list[str]] = {}
    for name in names:
        for i, alt in enumerate(_LED_ALTERNATIVES[name]):
            by_first.setdefault(alt[0], []).append(f"{alt[1:]}(?P<{name}_{i}>)")
    branches = [f"{first}(?:{'|'.join(alts)})" for first, alts in sorted(by_first.items())]
    return _ascii(r"\W(?=" + "|".join(branches) + ")")


def _rest_test(alternatives: Sequence[str]) -> Callable[[str], object] | None:
    r"""A test of a group's other alternatives on lower-cased text, skipping positions they cannot match at.

    The test returns something true (a match, True) when one matches, something false otherwise.

    * ``^...``: only position 0 can match (no MULTILINE), so try only there;
    * ``(?:^|\s)@...``: every match contains "@";
    * ``<marker>\s*$`` (markers of at most 3 characters): the marker ends where the trailing
      whitespace starts, so search only from 3 characters before that;
    * plain strings ("!!", an emoji): a substring test, no call into ``re``.

    Alternatives of one kind share one pattern (one call into ``re`` each).
    """
    kinds: dict[str, list[str]] = {}
    for alt in alternatives:
        kinds.setdefault(_kind(alt), []).append(alt)
    tests = [_test(kind, alts) for kind, alts in kinds.items()]
    if len(tests) <= 1:
        return tests[0] if tests else None
    if len(tests) == 2:  # (no generator per call)
        first, second = tests
        return lambda text: first(text) or second(text)
    return lambda text: any(test(text) for test in tests)


def _kind(alternative: str) -> str:
    if alternative.startswith("^"):
        return "start"
    if alternative.startswith(r"(?:^|\s)@"):
        return "at"
    if alternative in _ENDINGS:
        return "end"
    return "literal" if re.escape(alternative) == alternative else "any"


def _test(kind: str, alternatives: list[str]) -> Callable[[str], object]:
    # one function per kind, made once: no dispatch on the kind per call
    pattern = re.compile("|".join(alternatives))
    if kind == "start":
        return pattern.match
    if kind == "at":
        return lambda text: "@" in text and pattern.search(text) is not None
    # The lambdas use operators, not max() or map(text.__contains__): in CPython 3.11 those are calls
    # through tp_call (an argument tuple built and parsed per call); ~2,000 instructions per decision.
    if kind == "end":
        return lambda text: pattern.search(text, start if (start := len(text.rstrip()) - 3) > 0 else 0) is not None
    if kind == "literal":  # (re.escape leaves them unchanged: the pattern matches exactly these strings)
        if len(alternatives) == 1:
            (literal,) = alternatives
            return lambda text: literal in text
        return lambda text: any(literal in text for literal in alternatives)
    return pattern.search


_ENDINGS = frozenset(_SOURCES["dangling"][1:])
#: Each group's other alternatives (all but a leading word-led one) as a test of lower-cased text.
_REST: dict[str, Callable[[str], object] | None] = {
    name: _rest_test(alts[1:] if name in _WORD_LED else alts) for name, alts in _SOURCES.items()
}


def _start_tests() -> tuple[re.Pattern[str], tuple[tuple[str, int], ...]]:
    r"""The start-anchored (``^...``) alternatives of all groups as one pattern, for :func:`cue_flags`.

    Each group's are an optional lookahead followed by an empty group named after it:
    ``(?:(?=^...|^...)(?P<name>))?``. A lookahead consumes nothing, so every group's is tried at
    position 0 and the pattern always matches; the groups that hold are the markers that took part.
    One call into ``re`` instead of one per group (four groups have such alternatives).

    A backreference (addressee's ``(\w+)\W+\1``) counts groups from the start of the pattern, so the
    one group whose alternatives capture goes first, where its groups keep their numbers; more than
    one such group is refused.
    """
    starts = {
        name: [alt for alt in alts if _kind(alt) == "start"] for name, alts in _SOURCES.items() if name not in _WORD_LED
    }
    starts.update({name: [alt for alt in _SOURCES[name][1:] if _kind(alt) == "start"] for name in _WORD_LED})
    joined = {name: "|".join(alts) for name, alts in starts.items() if alts}
    capturing = [name for name, body in joined.items() if re.compile(body).groups]
    if len(capturing) > 1:
        raise ValueError(f"start-anchored alternatives of {capturing} capture: backreferences would shift")
    order = capturing + [name for name in joined if name not in capturing]
    pattern = _ascii("".join(f"(?:(?={joined[name]})(?P<{name}>))?" for name in order))
    return pattern, tuple((name, pattern.groupindex[name] - 1) for name in order)


#: The start-anchored alternatives as one pattern, and each group's marker as an index into groups().
_START, _START_MARKERS = _start_tests()
#: Each group's alternatives that are neither its leading word-led one nor start-anchored, as a test
#: of lower-cased text (groups without such alternatives left out).
_OTHER_TESTS: tuple[tuple[str, Callable[[str], object]], ...] = tuple(
    (name, test)
    for name, alts in _SOURCES.items()
    if (test := _rest_test([a for a in (alts[1:] if name in _WORD_LED else alts) if _kind(a) != "start"])) is not None
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _fast_path_safe(text: str) -> bool:
    """Whether the fast path gives the definitions' flags on ``text``.

    Matching ``text.lower()`` case-sensitively is the same as IGNORECASE on ``text`` when lower-casing
    changes nothing but ASCII letters, and the ``re.ASCII`` patterns see the same word boundaries
    when no non-ASCII character is a word character. True for ASCII text, and for text whose other
    characters have no case and are not letters or digits (emoji, dashes, curly quotes). Text with a
    cased non-ASCII letter ("É", "ſ", the Kelvin sign) or another word character ("中", "²") takes
    the IGNORECASE patterns instead.
    """
    return text.isascii() or all(c == c.lower() == c.upper() and not c.isalnum() for c in _NON_ASCII.findall(text))


def compile_all() -> None:
    """Compile the pattern of every set of word-led groups now (~0.4 s once) instead of on first use.

    Which sets a text needs depends on where its cues occur, so without this the first texts a
    process decides on pay a few milliseconds of compilation each: measured as a cold-pass decide
    p99 of 3.8 ms instead of under 2 ms in ``sraq intent eval``. Called when a model is loaded.
    """
    for mask in range(1, 1 << len(_LED_NAMES)):
        _led_pattern(mask)


#: The word-led groups, and each one's bit in a set of them held as an int (bit i: _LED_NAMES[i]).
_LED_NAMES = tuple(_WORD_LED)
_LED_BIT = {name: 1 << i for i, name in enumerate(_LED_NAMES)}
#: _any_word_led of each set, by its bits (filled by compile_all): a list index, where a tuple of
#: names would be built and hashed per search.
_LED_BY_MASK: list[re.Pattern[str] | None] = [None] * (1 << len(_LED_NAMES))


def _led_pattern(mask: int) -> re.Pattern[str]:
    """_any_word_led of the groups whose bits are set in ``mask`` (remembered by mask)."""
    pattern = _LED_BY_MASK[mask] = _any_word_led(tuple(n for i, n in enumerate(_LED_NAMES) if mask >> i & 1))
    return pattern


def _word_led_hits(lowered: str) -> set[str]:
    """Groups whose word-led alternative matches somewhere in ``lowered``.

    A search with the pattern of the groups not found yet stops at the first position where one of
    them matches and names one such group; the next search starts at that same position,
    without it (another group can match there too, none of them earlier). Every search runs inside
    ``re``; the last one scans the rest of the text for the groups never found.
    """
    padded = " " + lowered
    hits: set[str] = set()
    remaining = len(_LED_BY_MASK) - 1  # every group, as bits
    pos = 0
    while remaining:
        m = (_LED_BY_MASK[remaining] or _led_pattern(remaining)).search(padded, pos)
        if m is None:
            break
        first = _GROUP_OF_MARKER[m.lastgroup]  # type: ignore[index]  # (a match sets one marker)
        hits.add(first)
        pos = m.start()
        remaining ^= _LED_BIT[first]
    return hits


def cue_flags(text: str, names: Sequence[str] = CUE_NAMES) -> list[float]:
    """One 0/1 flag per cue group in ``names`` (default: all, in CUE_NAMES order)."""
    if not _fast_path_safe(text):
        return [1.0 if CUES[name].search(text) else 0.0 for name in names]
    lowered = text.lower()
    hits = _word_led_hits(lowered)
    if names is CUE_NAMES:
        # Every group: the start-anchored tests as one match, then the others of the groups not yet
        # found (a flag is an "or": a group found by a word-led alternative needs no other test).
        started = _START.match(lowered)
        if started is not None and started.lastindex is not None:  # (lastindex None: no marker set)
            markers = started.groups()
            hits.update(name for name, index in _START_MARKERS if markers[index] is not None)
        for name, test in _OTHER_TESTS:
            if name not in hits and test(lowered):
                hits.add(name)
        return [1.0 if name in hits else 0.0 for name in CUE_NAMES]
    # A few groups (the previous user message's): one test per group asked for.
    rests = _REST
    return [1.0 if name in hits or ((rest := rests[name]) is not None and rest(lowered)) else 0.0 for name in names]
