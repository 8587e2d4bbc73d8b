"""The inference fast path (intent.turn_features, TermIndex, cached task/earlier-message views) equals the
definitions training uses, on the dataset and on long, task-heavy conversations like the orchestrator
benchmark's (growing transcripts, repeated and updated tasks, callbacks), where its caches are warm."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from intent.clauses import clauses, keeps
from intent.contract import ChatMessage, TaskInfo
from intent.dataset import load
from intent.embedded import _task_stems, build_intent, reply_text
from intent.embedded_model import EmbeddedModel, Prediction
from intent.features import (
    CHAR_NGRAM_CHARS,
    CLAUSE_SPLIT,
    KEEP_CUE,
    context_terms,
    dense_features,
    message_terms,
    pair_features,
    task_view,
)
from intent.term_index import TF_TABLE
from intent.text import (
    _TASK_ID,
    _TASK_ID_LOWER,
    _TOKEN,
    WordMemo,
    clean_utterance,
    content_stems,
    ids_in_lowered,
    mentioned_ids,
    normalise,
    scan_tokens,
    stems_of,
    tokens,
    trigram_set,
    trigrams_of,
)
from intent.turn_features import _EARLIER_STEMS, _EARLIER_TRIGRAMS, Turn, _context_view, dense_row, pair_rows
from orchestrator.bench_turns import utterance

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT / "data/train.jsonl", ROOT / "data/test.jsonl", ROOT / "data/challenge.jsonl"]

#: Texts where joining or re-tokenising could change tokens: task ids across a join, dangling dashes,
#: the long s IGNORECASE equates with "s", the Kelvin sign, stopwords between "task" and a number.
TRICKY = [
    "please check the task",
    "5 is the one",
    "TASK 7 and task-8 and task_9",
    "taſk 5 again",
    "tas\u212a 12 now",
    "the task, 5 of them",
    "task to 5",
    "wait -",
    "so -   ",
    "x_task5 ok",
    "mytask 5",
    "",
    "  ",
    "…and then — what?!",
    "Ünïcode ÉTÉ ſtop 😂",
    "a" * 700 + " end",
    "don't won't it's 'quoted' task's",
]


def _model() -> EmbeddedModel:
    return EmbeddedModel.load()


def reference_logits(model: EmbeddedModel, transcript: list[ChatMessage], tasks: list[TaskInfo]) -> np.ndarray:
    """Action logits as training computes them (term strings, TfidfVocab.transform, dense_features)."""
    z = model.intercept.copy()
    for vocab, terms, offset in (
        (model.msg_vocab, message_terms(transcript[-1]), 0),
        (model.ctx_vocab, context_terms(transcript), len(model.msg_vocab)),
    ):
        idx, vals = vocab.transform(terms)
        z += vals @ model.coef[idx + offset]
    z += dense_features(transcript, tasks) @ model.coef[len(model.msg_vocab) + len(model.ctx_vocab) :]
    return z


def bench_like(
    conversations: int = 24, turns: int = 40, seed: int = 5
) -> Iterator[tuple[list[ChatMessage], list[TaskInfo]]]:
    """Turns of growing conversations (up to 50 messages) with 0..12 open tasks that repeat, get updates
    and are joined by new ones, assistant replies and task callbacks: the caches see what they see
    in the orchestrator benchmark."""
    rng = random.Random(seed)
    convs = [([], [TaskInfo(id=f"task-{k + 1}", summary=utterance(rng), last_update="queued") for k in range(c % 13)])
             for c in range(conversations)]  # fmt: skip
    for _ in range(turns):
        for transcript, tasks in convs:
            roll = rng.random()
            if tasks and roll < 0.1:
                t = rng.choice(tasks)
                transcript.append(
                    ChatMessage(role="tool", content=f"[{t.id} {rng.choice(['completed', 'progress', 'failed'])}] ok")
                )
            elif roll < 0.15:
                transcript.append(ChatMessage(role="user", content=rng.choice(TRICKY)))
            else:
                transcript.append(ChatMessage(role="user", content=utterance(rng)))
            del transcript[:-50]
            yield list(transcript), list(tasks)
            if tasks and rng.random() < 0.3:  # an update changes a task's text
                j = rng.randrange(len(tasks))
                tasks[j] = TaskInfo(id=tasks[j].id, summary=tasks[j].summary, last_update=utterance(rng).capitalize())
            if rng.random() < 0.1 and len(tasks) < 20:
                tasks.append(TaskInfo(id=f"task-{len(tasks) + 1}", summary=utterance(rng), last_update=""))
            reply = rng.choice(["Got it.", "Sure, I can help with that.", f"About {utterance(rng)}: queued."])
            transcript.append(ChatMessage(role="assistant", content=reply))


def _check_turn(model: EmbeddedModel, transcript: list[ChatMessage], tasks: list[TaskInfo]) -> None:
    turn = Turn(transcript[-1])
    rows, vals = model._terms.encode(transcript, turn)
    msg_rows, msg_vals = model.msg_vocab.transform(message_terms(transcript[-1]))
    ctx_rows, ctx_vals = model.ctx_vocab.transform(context_terms(transcript))
    assert np.array_equal(rows, np.concatenate([msg_rows, ctx_rows + len(model.msg_vocab)]))
    assert np.array_equal(vals, np.concatenate([msg_vals, ctx_vals]))
    assert dense_row(transcript, tasks, turn) == dense_features(transcript, tasks).tolist()
    assert np.array_equal(pair_rows(transcript, tasks, turn), pair_features(transcript, tasks))
    assert np.abs(model.logits(transcript, tasks, turn) - reference_logits(model, transcript, tasks)).max() <= 1e-9
    assert reply_text(transcript, tasks, turn.stems) == reply_text(transcript, tasks)
    pred = model.predict(transcript, tasks)
    plain = Prediction(pred.action, pred.confidence, pred.task_id, pred.proba)  # no scan: reply from the text
    assert build_intent(pred, transcript, tasks) == build_intent(plain, transcript, tasks)


def test_fast_features_equal_the_definitions_on_the_dataset() -> None:
    model = _model()
    for ex in load(DATA).examples:
        _check_turn(model, ex.transcript, ex.tasks)


def test_fast_features_equal_the_definitions_on_bench_like_conversations() -> None:
    model = _model()
    for transcript, tasks in bench_like():
        _check_turn(model, transcript, tasks)


def test_fast_features_equal_the_definitions_past_the_tf_table() -> None:
    """A turn of more than TF_TABLE rows: encode computes 1 + log(count) instead of looking it up."""
    model = _model()
    long_text = "thanks ok so " * 1500
    transcript = [ChatMessage(role="user", content=long_text), ChatMessage(role="assistant", content="ok " * 2000),
                  ChatMessage(role="user", content=long_text[:-1])]  # fmt: skip
    turn = Turn(transcript[-1])
    rows = b"".join([*model._terms.message_rows(turn), *model._terms.context_rows(transcript)])
    assert len(rows) // 8 > TF_TABLE
    _check_turn(model, transcript, [TaskInfo(id="task-1", summary="thanks for the help")])


@pytest.mark.parametrize("text", TRICKY)
def test_text_views_from_tokens(text: str) -> None:
    assert stems_of(tokens(text)) == content_stems(text)
    assert trigrams_of(tokens(text)) == trigram_set(text)
    assert normalise(text) == _TASK_ID.sub(" taskid ", text.lower())
    every = {re.sub(r"[-_ ]", "", m).replace("task", "task-") for m in _TASK_ID.findall(text.lower())}
    assert mentioned_ids(text) == every


@pytest.mark.parametrize("summary", TRICKY)
@pytest.mark.parametrize("update", ["5 done", "queued", "", "task 3 started", "- fine"])
def test_task_view_equals_the_joined_text(summary: str, update: str) -> None:
    stems, tri, in_summary = task_view(summary, update)
    assert stems == content_stems(summary) | content_stems(update)
    assert tri == trigram_set(f"{summary} {update}")
    assert in_summary == content_stems(summary)


@pytest.mark.parametrize("summary", TRICKY)
@pytest.mark.parametrize("update", ["5 done", "queued", "", "task 3 started", "- fine", "-", "ſ 4"])
def test_reply_task_stems_equal_the_joined_text(summary: str, update: str) -> None:
    assert _task_stems(summary, update) == content_stems(f"{summary} {update}")


@pytest.mark.parametrize("first", TRICKY)
@pytest.mark.parametrize("second", ["5 more", "and then -", "ok"])
def test_context_view_equals_the_joined_context(first: str, second: str) -> None:
    context = [ChatMessage(role="user", content=first), ChatMessage(role="assistant", content=second),
               ChatMessage(role="user", content="fine")]  # fmt: skip
    ctx = " ".join(m.content for m in context)
    assert _context_view(context) == (content_stems(ctx), trigram_set(ctx[-CHAR_NGRAM_CHARS:]))


def test_word_memo_gives_the_function_values_within_its_bound() -> None:
    calls: list[str] = []

    def shout(word: str) -> str:
        calls.append(word)
        return word.upper()

    memo = WordMemo(shout, 3)
    words = ["a", "b", "a", "c", "d", "e", "a", "b"]
    for word in words:
        assert memo[word] == word.upper()
        assert len(memo) <= 3
    assert calls == ["a", "b", "c", "d", "e", "a", "b"]  # the repeat of "a" within the bound is a hit


def test_turn_scans_the_message_afresh() -> None:
    """The message decided on is never looked up by its text (benchmarks repeat short messages)."""
    message = ChatMessage(role="user", content="thanks!")
    assert Turn(message).toks is not Turn(message).toks


def _clean_utterance_definition(text: str, limit: int = 280) -> str:
    """clean_utterance as first written (three regex substitutions): the fast one must equal it."""
    cleaned = re.compile(r"\b(?:u+h+m*|u+m+|e+r+m*|hmm+|mm+-?hm+|uh-huh)\b[,.]?\s*", re.IGNORECASE).sub("", text)
    cleaned = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE).sub(r"\1", cleaned)
    cleaned = re.sub(r"\s+", " ", cleaned).strip(" ,;-—–")
    if not cleaned:
        cleaned = text.strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned[:1].upper() + cleaned[1:]


#: Whitespace, stutters and disfluencies in the places clean_utterance treats specially.
UTTERANCES = [
    *TRICKY,
    "  uh, can you   book it\tplease \n",
    "um um the the THE flight\u00a0to\u2003Oslo",
    "mm-hmm sure, go go ahead -- ",
    "\x1c\x1dx\u2028y\u3000z\x85",
    "- ; ,",
    " \u200b zero width is not a space",
    "word " * 80,
]


def _stuttered(rng: random.Random) -> str:
    """A text made of the pieces clean_utterance's substitutions look for, in any case and spacing."""
    pieces = ["uh", "Umm", "ERM", "er", "hmm", "mm-hmm", "uh-huh", "um,", "the", "The", "THE", "go", "İ", "i",
              "x_1", "x_1.", "(so", "so)", "umbrella", "errand", "hm", "me", "task-5", "é", "É", "Éé",
              "mmhm", "eerm", "Uuh"]  # fmt: skip
    spaces = [" ", "  ", "\t", "\n", ", ", "-", ""]
    return "".join(rng.choice(pieces) + rng.choice(spaces) for _ in range(rng.randrange(1, 9)))


def test_clean_utterance_equals_its_definition() -> None:
    rng = random.Random(3)
    texts = [*UTTERANCES, *(utterance(rng) for _ in range(2000)), *(_stuttered(rng) for _ in range(5000))]
    texts += [m.content for ex in load(DATA).examples for m in ex.transcript if m.role == "user"]
    for text in texts:
        assert clean_utterance(text) == _clean_utterance_definition(text), text


#: Pieces of text around what the ASCII tokeniser treats specially: apostrophes in and out of words,
#: ``?!$%``, dots and "...", dashes at the end and before whitespace, separators, non-ASCII tokens.
_TOKEN_PIECES = ["don't", "it's", "'s", "'", "''", "a'b'c", "x'9", "9'x", "rock'n'roll", "?", "!", "$", "%", ".",
                 "..", "...", "-", " -", "- ", "\n", "\t", "\x1c", " ", "  ", ",", ":", "_", "ab", "Zq", "07",
                 "task", "Task-", " 5", "…", "—", "–", "€", "£", "😂", "\u00a0", "É", "ſ"]  # fmt: skip


def _fuzz_texts(rng: random.Random, piece_text: Callable[[random.Random], str]) -> list[str]:
    """Hand-picked tricky texts, bench utterances, 30,000 random texts of pieces, every dataset message."""
    texts = [*TRICKY, *UTTERANCES, *(utterance(rng) for _ in range(2000)), *(piece_text(rng) for _ in range(30_000))]
    return texts + [m.content for ex in load(DATA).examples for m in ex.transcript]


def _token_text(rng: random.Random) -> str:
    return "".join(rng.choice(_TOKEN_PIECES) for _ in range(rng.randint(0, 10)))


def test_scan_tokens_equal_the_token_pattern() -> None:
    """scan_tokens (C string methods on ASCII text) finds what _TOKEN.findall finds in the normalised text."""
    for text in _fuzz_texts(random.Random(6), _token_text):
        assert scan_tokens(text) == tuple(_TOKEN.findall(normalise(text))), repr(text)


def test_str_split_splits_where_the_regex_whitespace_class_matches() -> None:
    """clean_utterance collapses whitespace with str.split(): the same characters as the regex \\s."""
    space = re.compile(r"\s")
    assert all((space.match(c) is not None) == c.isspace() for c in map(chr, range(0x110000)))


def test_disfluency_start_classes_hold_every_case_insensitive_match() -> None:
    """_DISFLUENCY_START spells IGNORECASE out as [uU], [eE]...: no other character matches them."""
    for letter in "uehmr":
        pattern = re.compile(letter, re.IGNORECASE)
        assert {c for c in map(chr, range(0x110000)) if pattern.fullmatch(c)} == {letter, letter.upper()}


#: Pieces of text around task ids: cases, the long s and the Kelvin sign, separators, digits of other
#: scripts, word characters that glue to "task", and newlines (the joiner of ids_in_lowered).
_ID_PIECES = ["task", "TASK", "Task", "taſk", "tas\u212a", "-", "_", " ", "\n", "5", "12", "\u0661", "x", "é", "."]


def _id_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ID_PIECES) for _ in range(rng.randint(0, 8)))


def test_task_id_pattern_on_lowered_text_equals_the_definition() -> None:
    """_TASK_ID_LOWER finds and replaces what _TASK_ID does in lower-cased text without "ſ"."""
    rng = random.Random(3)
    texts = [*TRICKY, *(_id_text(rng) for _ in range(20_000))]
    texts += [m.content for ex in load(DATA).examples for m in ex.transcript]
    for text in texts:
        lowered = text.lower()
        if "ſ" not in lowered:
            assert _TASK_ID_LOWER.findall(lowered) == _TASK_ID.findall(lowered), text
            assert _TASK_ID_LOWER.sub(" taskid ", lowered) == _TASK_ID.sub(" taskid ", lowered), text
        assert normalise(text) == _TASK_ID.sub(" taskid ", lowered)


def test_only_the_long_s_matches_task_letters_in_lower_cased_text() -> None:
    """Under IGNORECASE, lower-cased text can spell "task" otherwise only with "ſ" (why _TASK_ID_LOWER
    is not used on text with it); the Kelvin sign is "k" once lower-cased."""
    for letter in "task":
        pattern = re.compile(letter, re.IGNORECASE)
        matching = {c for c in map(chr, range(0x110000)) if pattern.fullmatch(c)}
        assert {c for c in matching if c.lower() == c} == ({letter, "ſ"} if letter == "s" else {letter})
    assert "\u212a".lower() == "k"


def test_ids_of_texts_joined_by_newlines_are_those_of_each_text() -> None:
    """pair_rows finds the earlier messages' ids in their newline-joined text: no id spans a join."""
    rng = random.Random(4)
    for _ in range(20_000):
        texts = [_id_text(rng) for _ in range(rng.randint(1, 4))]
        assert ids_in_lowered("\n".join(texts).lower()) == set().union(*map(mentioned_ids, texts)), texts


#: Pieces of text around the clause patterns: their separators, the conjunctions after commas (and as
#: parts of other words), the words that keep a task, other cases and scripts.
_CLAUSE_PIECES = [".", ";", "!", "?", "\n", ",", ", ", ",  ", " ", "  ", "but", "and", "so", "though", "although",
                  "however", "button", "also", "sand", "still", "keep", "keeping", "stays", "continue", "carry on",
                  "finish", "go ahead", "proceed", "leave", "remain", "remains", "as planned", "is fine",
                  "are fine", "unchanged", "as is", "has issues", "fine", "the flight", "x", "é", "İ", "\u00a0",
                  "...", "—", "task-2"]  # fmt: skip


def _clause_text(rng: random.Random) -> str:
    return "".join(rng.choice(_CLAUSE_PIECES) for _ in range(rng.randint(0, 9)))


def test_clauses_and_keeps_equal_the_patterns() -> None:
    """clauses() gives the non-blank parts of CLAUSE_SPLIT.split, keeps() whether KEEP_CUE matches."""
    for text in _fuzz_texts(random.Random(8), _clause_text):
        lowered = text.lower()
        assert clauses(lowered) == [c for c in CLAUSE_SPLIT.split(lowered) if c and c.strip()], repr(text)
        for clause in [lowered, *CLAUSE_SPLIT.split(lowered)]:
            assert keeps(clause) == (KEEP_CUE.search(clause) is not None), repr(clause)


#: Context messages around the joins _context_view reads per message: "task" (any case, the long s) at
#: a message's end and digits (other scripts too) at the next one's start, words between them that
#: trigram_set drops, ids inside messages (callbacks), dangling dashes.
_CONTEXT_PIECES = ["task", "TASK", "Task", "taſk", "the task", "my task", "x'task", "5", "12 more", "\u0663 left",
                   "to 5", "the 7", "[task-3 progress] working", "task-4", "ok", "to", "the", "-", "wait -", " ",
                   "", "book it", "thanks", "-\n", "- \t", "a-b", "x -- y"]  # fmt: skip


def test_context_view_equals_the_joined_context_around_task_ids() -> None:
    rng = random.Random(9)
    for _ in range(20_000):
        contents = [" ".join(rng.choice(_CONTEXT_PIECES) for _ in range(rng.randint(0, 3))) for _ in range(3)]
        context = [ChatMessage(role=rng.choice(["user", "assistant", "tool"]), content=c) for c in contents]
        ctx = " ".join(contents)
        assert _context_view(context) == (content_stems(ctx), trigram_set(ctx[-CHAR_NGRAM_CHARS:])), contents


def test_turn_remembers_its_views_as_those_of_an_earlier_message() -> None:
    """A Turn's stems and (for a message within CHAR_NGRAM_CHARS) trigrams, stored for later turns,
    are content_stems and trigram_set of its text; a longer message's head trigrams are not stored."""
    for text in [*TRICKY, "please book the hotel near the station " * 20]:
        turn = Turn(ChatMessage(role="user", content=text))
        assert _EARLIER_STEMS[text] == content_stems(text)
        assert turn.tri == trigram_set(text[:CHAR_NGRAM_CHARS])
        assert _EARLIER_TRIGRAMS[text] == trigram_set(text)


def test_word_memo_remember_keeps_the_bound() -> None:
    memo = WordMemo(str.upper, 2)
    memo.remember("a", "x")
    assert memo["a"] == "x"
    memo.remember("b", "y")
    memo.remember("c", "z")
    assert len(memo) <= 2
    assert memo["c"] == "z"
    assert memo["a"] == "A"
