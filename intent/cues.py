"""Generic cue lexicons of conversational intent, as binary features of the message being decided on.

TF-IDF learns words seen in training; these groups carry the same signal to phrasings it has not seen
("call it off", "scrap that", "pull the plug" all fire ``cancel``). They are domain-independent on
purpose: no task nouns, only the verbs, particles and shapes people use to cancel, change, ask, thank,
chat or address someone else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_FLAGS = re.IGNORECASE

CUES: dict[str, re.Pattern[str]] = {
    "cancel": re.compile(
        r"\b(?:cancel\w*|forget (?:it|about|the|that|my)|never ?mind|stop\b|drop (?:it|the|that)|don'?t bother|"
        r"no need|no longer|not needed|(?:won'?t|don'?t|do not|will not) (?:need|require)|kill (?:it|the)|"
        r"call (?:it |the \w+ )?off|scrap|skip|abort|turn (?:it|that|the \w+) off|pull the plug|hold off|"
        r"we'?re good on|leave it|not (?:go|going) ahead|don'?t (?:go ahead|proceed)|withdraw|called off)",
        _FLAGS,
    ),
    "change": re.compile(
        r"\b(?:instead|actually|make it|change|move (?:it|the)|switch|rather|swap|pushed|bump|only|also|too|"
        r"add|include|prefer|must|needs? to be|has to|have to be|should be|no more than|under|max(?:imum)?|"
        r"at least|not the|update|correction|typo|wrong|increase|reduce|up to|go up|go down)\b",
        _FLAGS,
    ),
    "request": re.compile(
        r"\b(?:can (?:you|u)|could (?:you|u)|would (?:you|u)|will (?:you|u)|please|pls|plz|i need|we need|"
        r"need (?:you|a|an|to)|find|book|get (?:me|us)|order|send|set up|schedule|arrange|draft|check|look into|"
        r"sort out|organi[sz]e|buy|renew|submit|file|research|compare|contact|call|email|chase|reserve|hire|"
        r"write|prepare|pull together|put together|track|request)\b",
        _FLAGS,
    ),
    "question": re.compile(
        r"^\W*(?:(?:so|and|ok|okay|um|uh|hey|hi|wait|oh)\W+)*(?:what|when|where|who|which|why|how|is|are|was|"
        r"were|did|does|do|has|have|any|whats|what's|where's|when's|how's)\b",
        _FLAGS,
    ),
    "status": re.compile(
        r"\b(?:status|update on|how'?s (?:the|my|it)|how is|any news|news on|progress|where are we|is it done|"
        r"eta|yet\b|so far|heard back|confirmed|remind me)\b",
        _FLAGS,
    ),
    "capability": re.compile(
        r"\b(?:can|could|do) (?:you|u) (?:even |actually |also |really )?\w+[^?]*\bor\b|what can (?:you|u) do|"
        r"are (?:you|u) able|is that (?:out of scope|something you)|can (?:you|u) (?:even|actually)",
        _FLAGS,
    ),
    "thanks": re.compile(
        r"^\W*(?:thanks|thank (?:you|u)|thx|ty|cheers|ok(?:ay)?|k+|cool|great|perfect|nice|awesome|got it|"
        r"sounds good|brilliant|lovely|noted|will do|sweet|ace)\b",
        _FLAGS,
    ),
    "smalltalk": re.compile(
        r"\b(?:lol|lmao|haha\w*|how are (?:you|u)|happy (?:friday|monday|weekend)|good (?:morning|afternoon|"
        r"evening)|do (?:you|u) (?:ever|even) (?:sleep|eat)|whatcha|joke)\b|😂|🤣",
        _FLAGS,
    ),
    "greeting_only": re.compile(
        r"^\W*(?:hi|hello|hey|hiya|heya|yo|morning|evening|good (?:morning|afternoon|evening|day))"
        r"(?: there| again| all)?"
        r"(?:\W+(?:good (?:morning|afternoon|evening|day)|how are (?:you|u)(?: doing)?(?: today)?|how'?s it going))?"
        r"\W*$",
        _FLAGS,
    ),
    "addressee": re.compile(
        r"(?:^|\s)@\w+|^\W*(\w+)\W+\1\b|^\W*(?:babe|honey|hun|guys|mum|mom|dad|love|sweetie)\b", _FLAGS
    ),
    "urgent": re.compile(r"\b(?:asap|right now|urgent\w*|immediately|now!)|!!", _FLAGS),
    "dangling": re.compile(
        r"\b(?:the|a|an|to|for|with|and|or|of|my|our|at|in|on|from|about|like|so|but|that|was|is|if|um|uh)\W*$|"
        r"[-—–]\s*$|\.\.\.\s*$|…\s*$",
        _FLAGS,
    ),
}

CUE_NAMES: tuple[str, ...] = tuple(CUES)


def cue_flags(text: str, names: Sequence[str] = CUE_NAMES) -> list[float]:
    """One 0/1 flag per cue group in ``names`` (default: all, in CUE_NAMES order)."""
    return [1.0 if CUES[name].search(text) else 0.0 for name in names]
