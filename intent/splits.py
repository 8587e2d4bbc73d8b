"""Deterministic stratified splits, cross-validation folds and summary statistics of a dataset."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from intent.contract import ACTIONS
from intent.dataset import Example


def stratified_split(
    examples: Sequence[Example], test_fraction: float = 0.2, seed: int = 13
) -> tuple[list[int], list[int]]:
    """Indices of a train/test split, stratified by action, identical for the same rows and seed.

    Within each action the rows are ordered by id (so the split does not depend on file order), shuffled
    with ``seed`` and the first ``round(n * test_fraction)`` go to the test split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    by_action: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_action[ex.action].append(i)
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for action in sorted(by_action):
        idx = sorted(by_action[action], key=lambda i: (examples[i].id, i))
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return sorted(train), sorted(test)


def stratified_folds(labels: Sequence[str], k: int, seed: int = 13) -> list[int]:
    """Fold number (0..k-1) of each row, each action spread evenly over the folds."""
    rng = random.Random(seed)
    folds = [0] * len(labels)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    offset = 0
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[i] = (j + offset) % k
        offset += len(idx)
    return folds


def dataset_stats(examples: Sequence[Example]) -> dict[str, object]:
    """Counts a dataset author checks: actions, styles, domains, channels, ledger sizes, turns."""
    n = len(examples)
    actions = Counter(ex.action for ex in examples)
    multi = sum(1 for ex in examples if len(ex.transcript) > 1)
    with_tool = sum(1 for ex in examples if any(m.role == "tool" for m in ex.transcript))
    task_rows = [ex for ex in examples if ex.expected.action.needs_task]
    not_first = 0
    for ex in task_rows:
        task_id = ex.expected.args()["task_id"]
        if ex.tasks and ex.tasks[0].id != task_id:
            not_first += 1
    return {
        "rows": n,
        "actions": {a.value: actions.get(a.value, 0) for a in ACTIONS},
        "styles": dict(Counter(ex.meta.get("style", "?") for ex in examples).most_common()),
        "domains": dict(Counter(ex.meta.get("domain", "?") for ex in examples).most_common()),
        "channels": dict(Counter(ex.meta.get("channel", "?") for ex in examples).most_common()),
        "ledger_sizes": dict(sorted(Counter(len(ex.tasks) for ex in examples).items())),
        "last_role": dict(Counter(ex.last_message.role for ex in examples).most_common()),
        "multi_turn_fraction": round(multi / n, 3) if n else 0.0,
        "with_tool_message_fraction": round(with_tool / n, 3) if n else 0.0,
        "task_not_first_fraction": round(not_first / len(task_rows), 3) if task_rows else 0.0,
        "with_reasoning_fraction": round(sum(1 for ex in examples if ex.reasoning) / n, 3) if n else 0.0,
    }


def duplicate_warnings(examples: Sequence[Example]) -> list[str]:
    """Duplicate row ids and duplicate last messages (authoring mistakes, not load errors)."""
    out: list[str] = []
    ids = Counter(ex.id for ex in examples)
    out += [f"duplicate id {i!r} ({c} rows)" for i, c in ids.items() if c > 1]
    last = Counter(ex.last_message.content.strip().lower() for ex in examples if ex.last_message.role == "user")
    out += [f"duplicate last user message {m[:60]!r} ({c} rows)" for m, c in last.items() if c > 1]
    return out
