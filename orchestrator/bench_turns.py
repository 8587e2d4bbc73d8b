"""Varied user turns for the benchmarks, from a seeded generator (no data files needed)."""

from __future__ import annotations

import random

#: Shapes of user turns, filled from the slot lists below with a seeded generator: the turns are
#: varied (nearly every text differs, as in real traffic) so no per-text cache of the model's
#: features flatters the numbers, and they span every action a real model picks.
TEMPLATES = (
    "can you find me a flight to {city} {day} under {ref} EUR",
    "actually make it the {time} one, {filler}",
    "what's the weather like in {city} {day}?",
    "{thanks}",
    "cancel the {thing} please, we don't need it any more",
    "book a table for {n} at {hour} somewhere near {place}, ref {ref}",
    "any news on the {thing}?",
    "please send the {doc} to {name} before {day}, it's order {ref}",
    "hmm {filler} let me think about the {thing} first",
    "also add {name} to the {thing}, {n} people in total",
)
SLOTS: dict[str, tuple[str, ...]] = {
    "city": ("Lisbon", "Porto", "Kyoto", "Berlin", "Austin", "Nairobi", "Lima", "Oslo", "Hanoi", "Quebec"),
    "day": ("next friday", "tomorrow", "on the 14th", "this weekend", "monday morning", "in two weeks"),
    "time": ("morning", "evening", "7am", "late", "earliest", "cheapest", "direct"),
    "filler": ("thanks", "if that's ok", "sorry", "no rush", "I think", "please"),
    "thanks": ("thanks!", "thank you so much", "ok cool", "perfect, thanks", "great", "ty"),
    "thing": ("hotel search", "flight", "dinner booking", "car rental", "report", "invoice", "visa form"),
    "n": ("two", "three", "4", "six", "8"),
    "hour": ("7", "8pm", "half past six", "noon", "9:30"),
    "place": ("the station", "the office", "downtown", "the river", "our hotel"),
    "doc": ("contract", "slides", "Q3 numbers", "itinerary", "receipts"),
    "name": ("Ana", "Kenji", "Maria", "Tom", "Priya", "Lukas"),
}


def utterance(rng: random.Random) -> str:
    """One user turn drawn from TEMPLATES (a third of them two sentences long)."""
    parts = [rng.choice(TEMPLATES) for _ in range(2 if rng.random() < 0.33 else 1)]
    filled = [
        t.format(ref=rng.randint(100, 9999), **{k: rng.choice(v) for k, v in SLOTS.items() if "{" + k + "}" in t})
        for t in parts
    ]
    return " ".join(filled)
