"""Evaluate any decision backend on labelled examples; the report is the ``sraq intent eval --json`` contract.

Definitions (documented in docs/embedded-and-eval.md):

* ``accuracy``, ``per_action``, ``macro_f1``, ``confusion``: on the action only. A row whose output was
  invalid (did not parse, named a non-open task, or the backend failed) is predicted as ``"invalid"``:
  it counts as wrong and appears as an ``invalid`` column of the confusion matrix.
* ``task_id_accuracy``: among update/cancel rows whose predicted action is right, the share naming the
  right task (0.0 when there is no such row; ``task_id_rows`` says how many there were).
* A decision is *correct* when its action is right and, for update/cancel, its task is right. ``ece``
  (10 equal-width confidence bins) and ``selective_accuracy`` (most confident first; ties broken by row
  order) use that correctness; invalid rows have confidence 0.
* ``latency_ms``: wall-clock time around ``decide``; ``latency_by_tier`` splits it by the tiers tried;
  ``cpu_ms``: CPU time of the calling thread during ``decide`` (the compute of an inline tier like
  ``embedded``, without the waits a busy machine adds; meaningless for network tiers).
* ``escalation_rate``: share of rows a cascade passed beyond its first tier; null for a single tier.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from intent.backend import Backend, BackendError, DecisionRequest, Undecided
from intent.contract import ACTIONS, Intent
from intent.dataset import Example
from intent.errors import InvalidDecision
from intent.wire import parse_any, to_call

COVERAGES = (1.0, 0.9, 0.75, 0.5)
INVALID = "invalid"
ECE_BINS = 10


class RowResult(msgspec.Struct, kw_only=True):
    """One evaluated row (also the line format of ``--save-predictions`` and ``--compare`` files)."""

    id: str
    expected: str
    expected_task: str | None = None
    predicted: str = INVALID
    predicted_task: str | None = None
    call: str | None = None
    confidence: float = 0.0
    latency_ms: float = 0.0
    cpu_ms: float = 0.0
    tier: str | None = None
    escalated: bool | None = None
    tiers: dict[str, float] = msgspec.field(default_factory=dict)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.predicted != INVALID

    @property
    def correct(self) -> bool:
        return self.predicted == self.expected and self.predicted_task == self.expected_task


def _task_of(intent: Intent) -> str | None:
    return intent.args().get("task_id")


def expected_row(example: Example) -> RowResult:
    return RowResult(id=example.id, expected=example.action, expected_task=_task_of(example.expected))


async def evaluate_backend(
    backend: Backend, examples: Sequence[Example], on_row: Callable[[RowResult], None] | None = None
) -> list[RowResult]:
    """Ask ``backend`` for every example, sequentially, and record what it said and how long it took."""
    results: list[RowResult] = []
    for example in examples:
        row = expected_row(example)
        request = DecisionRequest(
            conversation_id=f"eval-{example.id}", turn_id=example.id, transcript=example.transcript, tasks=example.tasks
        )
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            decision = await backend.decide(request)
        except (InvalidDecision, BackendError, Undecided) as exc:
            row.latency_ms = (time.perf_counter() - t0) * 1000.0
            row.cpu_ms = (time.thread_time() - c0) * 1000.0
            row.error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, Undecided):
                row.tiers = {a.tier: a.latency_ms for a in exc.path}
                row.escalated = len(exc.path) > 1 if exc.path else None
        else:
            row.latency_ms = (time.perf_counter() - t0) * 1000.0
            row.cpu_ms = (time.thread_time() - c0) * 1000.0
            row.predicted = decision.intent.action.value
            row.predicted_task = _task_of(decision.intent)
            row.call = to_call(decision.intent)
            row.confidence = float(decision.confidence)
            row.tier = decision.tier
            row.tiers = {a.tier: a.latency_ms for a in decision.path} or {decision.tier: decision.latency_ms}
            row.escalated = len(decision.path) > 1 if decision.path else None
        results.append(row)
        if on_row is not None:
            on_row(row)
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))])


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q), 4) for q in (50, 95, 99)}


def per_action(rows: Sequence[RowResult]) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for action in (a.value for a in ACTIONS):
        tp = sum(1 for r in rows if r.expected == action and r.predicted == action)
        pred = sum(1 for r in rows if r.predicted == action)
        support = sum(1 for r in rows if r.expected == action)
        precision = tp / pred if pred else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[action] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    return out


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of |accuracy - mean confidence| weighted by the bin's share of rows."""
    n = len(confidences)
    if n == 0:
        return 0.0
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(confidences):
        buckets[min(bins - 1, int(c * bins))].append(i)
    ece = 0.0
    for idx in buckets.values():
        acc = sum(correct[i] for i in idx) / len(idx)
        conf = sum(confidences[i] for i in idx) / len(idx)
        ece += len(idx) / n * abs(acc - conf)
    return ece


def selective_accuracy(confidences: Sequence[float], correct: Sequence[bool], coverage: float) -> float:
    """Accuracy of the ``ceil(coverage * n)`` most confident rows (stable: ties keep row order)."""
    n = len(confidences)
    if n == 0:
        return 0.0
    k = max(1, math.ceil(coverage * n - 1e-9))
    order = sorted(range(n), key=lambda i: -confidences[i])[:k]
    return sum(correct[i] for i in order) / k


def report(rows: Sequence[RowResult], *, cascade: bool = False) -> dict[str, Any]:
    """Every figure of the eval contract (plus a few extra keys) for evaluated rows."""
    n = len(rows)
    pa = per_action(rows)
    correct = [r.correct for r in rows]
    conf = [r.confidence if r.valid else 0.0 for r in rows]
    task_rows = [r for r in rows if r.expected_task is not None and r.predicted == r.expected]
    labels = [a.value for a in ACTIONS]
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for r in rows:
        confusion.setdefault(r.expected, {p: 0 for p in labels})
        confusion[r.expected][r.predicted] = confusion[r.expected].get(r.predicted, 0) + 1
    by_tier: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for tier, ms in r.tiers.items():
            by_tier[tier].append(ms)
    escalation: float | None = None
    if cascade:
        known = [r.escalated for r in rows if r.escalated is not None]
        escalation = round(sum(known) / n, 4) if n else 0.0
    return {
        "rows": n,
        "accuracy": round(sum(r.predicted == r.expected for r in rows) / n, 4) if n else 0.0,
        "macro_f1": round(sum(float(v["f1"]) for v in pa.values()) / len(pa), 4),
        "task_id_accuracy": round(sum(r.predicted_task == r.expected_task for r in task_rows) / len(task_rows), 4)
        if task_rows
        else 0.0,
        "task_id_rows": len(task_rows),
        "decision_accuracy": round(sum(correct) / n, 4) if n else 0.0,
        "valid_rate": round(sum(r.valid for r in rows) / n, 4) if n else 0.0,
        "ece": round(expected_calibration_error(conf, correct), 4),
        "per_action": pa,
        "selective_accuracy": {str(c): round(selective_accuracy(conf, correct, c), 4) for c in COVERAGES},
        "latency_ms": _latency([r.latency_ms for r in rows]),
        "cpu_ms": _latency([r.cpu_ms for r in rows]),
        "latency_by_tier": {tier: _latency(v) for tier, v in sorted(by_tier.items())},
        "confusion": confusion,
        "escalation_rate": escalation,
    }


def load_predictions(lines: Iterable[str], examples: Sequence[Example]) -> list[RowResult]:
    """Rows of another run, matched to ``examples`` by id.

    Each line is a ``--save-predictions`` row, or any row with ``id`` and ``final`` (a call string or
    JSON decision, e.g. a teacher-labelled file in the dataset's full-row format).
    """
    gold = {ex.id: expected_row(ex) for ex in examples}
    out: list[RowResult] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = msgspec.json.decode(line)
        if not isinstance(obj, dict) or "id" not in obj:
            raise ValueError(f"line {number}: prediction rows need an 'id'")
        row_id = str(obj["id"])
        if row_id not in gold:
            continue
        if "predicted" in obj:
            row = msgspec.convert(obj, RowResult)
        else:
            row = msgspec.structs.replace(gold[row_id])
            try:
                intent = parse_any(str(obj.get("final", "")))
            except InvalidDecision as exc:
                row.error = exc.reason
            else:
                row.predicted, row.predicted_task = intent.action.value, _task_of(intent)
                row.call, row.confidence = to_call(intent), float(obj.get("confidence", 1.0))
        out.append(row)
    return out


def compare(rows: Sequence[RowResult], other: Sequence[RowResult]) -> dict[str, Any]:
    """Agreement with another run on the common rows, and per-action F1 deltas (this run minus other)."""
    theirs = {r.id: r for r in other}
    common = [r for r in rows if r.id in theirs]
    agree = [r.predicted == theirs[r.id].predicted and r.predicted_task == theirs[r.id].predicted_task for r in common]
    mine_pa = per_action(common)
    other_pa = per_action([theirs[r.id] for r in common])
    return {
        "rows": len(common),
        "agreement": round(sum(agree) / len(common), 4) if common else 0.0,
        "action_agreement": round(sum(r.predicted == theirs[r.id].predicted for r in common) / len(common), 4)
        if common
        else 0.0,
        "per_action_f1_delta": {a: round(float(mine_pa[a]["f1"]) - float(other_pa[a]["f1"]), 4) for a in mine_pa},
        "other": {k: v for k, v in report([theirs[r.id] for r in common]).items() if k in ("accuracy", "macro_f1")},
    }


def baseline_regressions(current: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> list[str]:
    """What fell by more than ``tolerance`` against a saved report: any action's F1, task-id accuracy, valid rate."""
    problems: list[str] = []
    for action, base in baseline.get("per_action", {}).items():
        now = current["per_action"].get(action, {"f1": 0.0})
        if float(now["f1"]) < float(base["f1"]) - tolerance:
            problems.append(f"{action} F1 {now['f1']:.4f} < baseline {base['f1']:.4f} - {tolerance}")
    for key in ("task_id_accuracy", "valid_rate"):
        if key in baseline and float(current[key]) < float(baseline[key]) - tolerance:
            problems.append(f"{key} {current[key]:.4f} < baseline {baseline[key]:.4f} - {tolerance}")
    return problems
