"""The cue flags' fast path (lower-cased text, one scan for all word-led alternatives) against the
definitions: the case-insensitive regexes of ``intent.cues.CUES``, searched one by one."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from intent.cues import _LED_ALTERNATIVES, _SOURCES, _WORD_LED, CUE_NAMES, CUES, _alternatives, cue_flags
from intent.dataset import load

ROOT = Path(__file__).resolve().parents[1]


def _reference(text: str) -> list[float]:
    return [1.0 if CUES[name].search(text) else 0.0 for name in CUE_NAMES]


def _fuzz_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings of the cues' own words, with case changes, punctuation, emoji and letters that
    IGNORECASE folds specially (ſ, the Kelvin sign, dotted İ), non-ASCII word characters (中, ²) and a
    character only Unicode counts as whitespace ("\\x1c")."""
    words = sorted(set(re.findall(r"[a-z']+", " ".join(p.pattern for p in CUES.values()))))
    seps = [" ", "  ", ", ", ". ", "!", "?", "!!", "...", "…", "—", "-", "\n", " @", "@", "😂", "'", "_", "é", "É"]
    seps += ["ſ", "\u212a", "İ", "\t", " - ", "\u00a0", "中", "²", "\x1c"]
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts: list[str] = []
        for _ in range(rng.randint(0, 8)):
            word = rng.choice(words)
            word = word.upper() if rng.random() < 0.2 else word.capitalize() if rng.random() < 0.2 else word
            parts += [word, rng.choice(seps) if rng.random() < 0.5 else " "]
        text = "".join(parts)
        texts.append(text[: rng.randint(0, 80)] if rng.random() < 0.3 else text)
    return texts


def test_cue_flags_equal_the_definitions_on_the_dataset() -> None:
    examples = load([ROOT / "data/train.jsonl", ROOT / "data/test.jsonl", ROOT / "data/challenge.jsonl"]).examples
    texts = {m.content for ex in examples for m in ex.transcript}
    for text in texts:
        assert cue_flags(text) == _reference(text), text


@pytest.mark.parametrize("seed", [0, 1])
def test_cue_flags_equal_the_definitions_on_random_text(seed: int) -> None:
    for text in _fuzz_texts(5000, seed):
        assert cue_flags(text) == _reference(text), repr(text)
        assert cue_flags(text, ("cancel", "request")) == [
            _reference(text)[CUE_NAMES.index(n)] for n in ("cancel", "request")
        ]


def test_sources_suit_the_fast_path() -> None:
    """What the fast path's rewrites rely on (see the comment in intent/cues.py)."""
    for name, alternatives in _SOURCES.items():
        for alt in alternatives:
            # lower-cased text, case-sensitive match: no upper-case letter may appear outside escapes
            assert not any(c.isupper() for c in re.sub(r"\\.", "", alt)), (name, alt)
    for name, body in _WORD_LED.items():
        # "\b" then a match that starts with a word character; no anchor or lookbehind sees the padding
        outside_classes = body.replace("[^", "[")
        assert "^" not in outside_classes and r"\A" not in body and "(?<" not in body, name
        assert _first_chars(re._parser.parse(body)) <= set("abcdefghijklmnopqrstuvwxyz0123456789_"), name  # type: ignore[attr-defined]


def test_word_led_alternatives_match_where_their_group_does() -> None:
    """The distributed alternatives (_alternatives) of a word-led group match at the same positions."""
    texts = [text.lower() for seed in (2, 3) for text in _fuzz_texts(1000, seed)]
    for name, body in _WORD_LED.items():
        group = re.compile(body)
        alternatives = re.compile("|".join(f"(?:{alt})" for alt in _LED_ALTERNATIVES[name]))
        for text in texts:
            for pos in range(len(text) + 1):
                assert (group.match(text, pos) is None) == (alternatives.match(text, pos) is None), (name, text, pos)


def test_alternatives_distribute_leading_groups_only() -> None:
    assert _alternatives(r"(?:a|b(?:c|d))e\b") == [r"ae\b", r"b(?:c|d)e\b"]
    assert _alternatives(r"(?:x[|(]|y\|)z") == [r"x[|(]z", r"y\|z"]
    for refused in (r"(?:a|b)?c", r"\w+x", "a*b", "(?:a|(?:b)+)c"):
        with pytest.raises(ValueError):
            _alternatives(refused)


def _first_chars(parsed: object) -> set[str]:
    """Characters a match of ``parsed`` (an ``re._parser`` tree) can start with; fails on other shapes."""
    from re import _constants as c  # type: ignore[attr-defined]

    op, av = next(iter(parsed))  # type: ignore[call-overload]
    if op is c.LITERAL:
        return {chr(av)}
    if op is c.SUBPATTERN:
        return _first_chars(av[-1])
    if op is c.BRANCH:
        return set().union(*(_first_chars(branch) for branch in av[1]))
    raise AssertionError(f"unexpected first item {op} in a word-led alternative")


def test_loading_the_model_compiles_every_cue_pattern_up_front() -> None:
    # otherwise the first decisions of a process pay the compilation (cold-pass p99 3.8 ms, not ~1 ms)
    from intent import cues
    from intent.embedded import EmbeddedBackend

    cues._any_word_led.cache_clear()
    EmbeddedBackend.load()
    assert cues._any_word_led.cache_info().currsize == (1 << len(cues._WORD_LED)) - 1


def test_start_pattern_reports_the_groups_whose_start_anchored_alternatives_match() -> None:
    """_START (one match for the ``^...`` alternatives of all groups) against each group's own ones."""
    from intent.cues import _START, _START_MARKERS, _fast_path_safe

    own = {name: re.compile("|".join(a for a in _SOURCES[name] if a.startswith("^"))) for name, _ in _START_MARKERS}
    # (the texts cue_flags uses it on)
    texts = [text.lower() for seed in (4, 5) for text in _fuzz_texts(3000, seed) if _fast_path_safe(text)]
    texts += ["ok ok", "hi hi there", "bob, bob!", "mum what's up", "hey there how are you", "thanks", "so what"]
    for text in texts:
        started = _START.match(text)
        assert started is not None
        found = {name for name, index in _START_MARKERS if started.groups()[index] is not None}
        assert found == {name for name, pattern in own.items() if pattern.match(text)}, repr(text)


def test_ascii_patterns_refuse_escapes_whose_meaning_ascii_changes() -> None:
    from intent.cues import _ascii

    assert _ascii(r"\W(?=a\w+\b)").flags & re.ASCII
    for refused in (r"a\s*$", r"\d+", r"\S"):
        with pytest.raises(ValueError):
            _ascii(refused)


def test_cue_flags_equal_the_definitions_on_texts_at_the_edges() -> None:
    """Cues at the very start or end of a text, and texts shorter than an ending's window (the fuzz
    texts always start with a word)."""
    texts = ["😂", "🤣", "😂 ok", "🤣🤣", "!!", "!! now", "wow!!", "-", " — ", "...", "…", "a…  ", "x -\n", ""]
    texts += ["so the", "the", "hi ...", "@bob hi", "@", "ok ok", "k", "uh", "hey — ", "ab…", "...\t"]
    for text in texts:
        assert cue_flags(text) == _reference(text), repr(text)
