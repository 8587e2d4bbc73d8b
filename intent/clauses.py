"""The clauses of the message being decided on, as :func:`~intent.features.pair_features` splits them.

:data:`~intent.features.CLAUSE_SPLIT` and :data:`~intent.features.KEEP_CUE` (the definitions, which
training uses) start with ``\\b`` or a character class, so ``re`` tries them at every position of the
text: they were a tenth of a task-resolving decision's instructions. Each can only match where one of a
few literals occurs, which C substring tests (``str.__contains__``) find at a fraction of the cost; the
patterns run only when one does. ``tests/test_turn_features.py`` checks both against the patterns.
"""

from __future__ import annotations

import re

from intent.features import CLAUSE_SPLIT, KEEP_CUE

#: Words that CLAUSE_SPLIT's word alternative needs ("although" contains "though").
_SPLIT_WORDS = ("but", "however", "though")
#: CLAUSE_SPLIT's comma alternative, without its lookahead (so it starts with its literal: ``re``
#: skips to each comma). It matches where that alternative does.
_COMMA_CONJUNCTION = re.compile(r",\s*(?:but|and|so|though|although)\b")
#: A literal in every KEEP_CUE alternative ("keeping" contains "keep", "stays" "stay", "remains"
#: "remain", "is fine" and "are fine" "fine").
_KEEP_LITERALS = (
    "still", "keep", "stay", "continue", "carry on", "finish", "go ahead", "proceed", "leave", "remain",
    "as planned", "fine", "unchanged", "as is",
)  # fmt: skip


def clauses(lowered: str) -> list[str]:
    """The non-blank parts of ``CLAUSE_SPLIT.split(lowered)``, in order (pair_features skips the others).

    Without the words of the pattern's two word alternatives, only its ``[.;!?\\n]+`` can match: the
    text is cut at each of those characters with str methods (a run of them leaves empty parts
    between its characters, which are blank like the pattern's parts never are, and are skipped too).
    """
    if any(map(lowered.__contains__, _SPLIT_WORDS)) or ("," in lowered and _COMMA_CONJUNCTION.search(lowered)):
        parts = CLAUSE_SPLIT.split(lowered)
    else:
        # (str.replace scans in C and returns the text itself where the character is not in it)
        parts = lowered.replace(".", "\n").replace(";", "\n").replace("!", "\n").replace("?", "\n").split("\n")
    return [c for c in parts if c and c.strip()]


def keeps(clause: str) -> bool:
    """Whether :data:`~intent.features.KEEP_CUE` matches in ``clause`` (a clause that says what stays)."""
    return any(map(clause.__contains__, _KEEP_LITERALS)) and KEEP_CUE.search(clause) is not None
