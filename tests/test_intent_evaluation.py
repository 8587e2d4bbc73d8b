"""Evaluation metrics against values computed by hand on a tiny fixture; compare; baseline check."""

from __future__ import annotations

import pytest

from intent.evaluation import (
    RowResult,
    baseline_regressions,
    compare,
    expected_calibration_error,
    load_predictions,
    report,
    selective_accuracy,
)
from tests.test_intent_dataset import _examples


def _fixture() -> list[RowResult]:
    def row(i: int, exp: str, pred: str, conf: float, et: str | None = None, pt: str | None = None) -> RowResult:
        return RowResult(id=f"r{i}", expected=exp, expected_task=et, predicted=pred, predicted_task=pt,
                         confidence=conf, latency_ms=float(i), tiers={"embedded": float(i)})  # fmt: skip

    return [
        row(1, "reply", "reply", 0.9),
        row(2, "reply", "noop", 0.6),
        row(3, "update_task", "update_task", 0.8, "task-1", "task-1"),
        row(4, "update_task", "update_task", 0.7, "task-2", "task-1"),  # right action, wrong task
        row(5, "cancel_task", "invalid", 0.0, "task-3", None),
        row(6, "noop", "noop", 0.95),
        row(7, "start_task", "reply", 0.55),
        row(8, "start_task", "start_task", 0.85),
    ]


def test_report_matches_hand_computed_values() -> None:
    rep = report(_fixture())
    assert rep["rows"] == 8
    assert rep["accuracy"] == 0.625  # rows 1, 3, 4, 6, 8
    pa = rep["per_action"]
    assert pa["reply"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert pa["start_task"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert pa["update_task"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert pa["cancel_task"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert pa["noop"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert rep["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1 + 0 + 2 / 3) / 5, abs=1e-4)
    assert rep["task_id_accuracy"] == 0.5 and rep["task_id_rows"] == 2
    assert rep["decision_accuracy"] == 0.5  # rows 1, 3, 6, 8
    assert rep["valid_rate"] == 0.875
    # bins: 9 -> rows 1, 6 (acc 1, conf .925); 8 -> 3, 8 (1, .825); 7 -> 4 (0, .7); 6 -> 2 (0, .6); 5 -> 7 (0, .55)
    assert rep["ece"] == pytest.approx((2 * 0.075 + 2 * 0.175 + 0.7 + 0.6 + 0.55) / 8, abs=1e-4)
    # most confident first: 6 ok, 1 ok, 8 ok, 3 ok, 4 x, 2 x, 7 x, 5 x
    assert rep["selective_accuracy"] == {"1.0": 0.5, "0.9": 0.5, "0.75": 0.6667, "0.5": 1.0}
    assert rep["latency_ms"] == {"p50": 4.0, "p95": 8.0, "p99": 8.0}
    assert rep["latency_by_tier"] == {"embedded": {"p50": 4.0, "p95": 8.0, "p99": 8.0}}
    assert rep["confusion"]["reply"] == {"reply": 1, "start_task": 0, "update_task": 0, "cancel_task": 0, "noop": 1}
    assert rep["confusion"]["cancel_task"]["invalid"] == 1
    assert rep["confusion"]["start_task"]["reply"] == 1 and rep["confusion"]["update_task"]["update_task"] == 2
    assert rep["escalation_rate"] is None


def test_contract_keys_and_escalation() -> None:
    rows = _fixture()
    rows[0].escalated, rows[1].escalated, rows[2].escalated = True, False, False
    rep = report(rows, cascade=True)
    assert rep["escalation_rate"] == 0.125
    for key in ("rows", "accuracy", "macro_f1", "task_id_accuracy", "valid_rate", "ece", "per_action",
                "selective_accuracy", "latency_ms", "confusion", "escalation_rate"):  # fmt: skip
        assert key in rep
    assert report([])["rows"] == 0


def test_calibration_helpers_edge_cases() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.5, 0.5], [True, False]) == 0.0
    assert expected_calibration_error([0.8], [False]) == pytest.approx(0.8)
    # ties keep row order
    assert selective_accuracy([0.5, 0.5, 0.5, 0.5], [True, False, False, False], 0.25) == 1.0
    assert selective_accuracy([0.5, 0.5, 0.5, 0.5], [False, True, True, True], 0.25) == 0.0


def test_compare_with_another_run() -> None:
    rows = _fixture()
    perfect = [RowResult(id=r.id, expected=r.expected, expected_task=r.expected_task, predicted=r.expected,
                         predicted_task=r.expected_task, confidence=1.0) for r in rows]  # fmt: skip
    cmp = compare(rows, perfect)
    assert cmp["rows"] == 8 and cmp["agreement"] == 0.5 and cmp["action_agreement"] == 0.625
    assert cmp["per_action_f1_delta"]["update_task"] == 0.0
    assert cmp["per_action_f1_delta"]["reply"] == -0.5 and cmp["other"]["macro_f1"] == 1.0


def test_load_predictions_accepts_saved_rows_and_dataset_rows() -> None:
    examples = _examples(1)  # ids r-0-000 .. r-4-000: reply, start, update(task-1), cancel(task-1), noop
    lines = [
        '{"id": "r-0-000", "expected": "reply", "predicted": "noop", "confidence": 0.4}',
        '{"id": "r-2-000", "final": "update_task(task-2, later)"}',
        '{"id": "r-3-000", "final": "not a call"}',
        '{"id": "unknown", "final": "noop"}',
    ]
    rows = {r.id: r for r in load_predictions(lines, examples)}
    assert set(rows) == {"r-0-000", "r-2-000", "r-3-000"}
    assert rows["r-0-000"].predicted == "noop"
    assert rows["r-2-000"].predicted == "update_task" and rows["r-2-000"].predicted_task == "task-2"
    assert rows["r-2-000"].expected_task == "task-1"
    assert not rows["r-3-000"].valid and rows["r-3-000"].error
    with pytest.raises(ValueError, match="need an 'id'"):
        load_predictions(['{"final": "noop"}'], examples)


def test_baseline_regressions() -> None:
    rep = report(_fixture())
    assert baseline_regressions(rep, rep, 0.02) == []
    worse = {**rep, "per_action": {**rep["per_action"], "reply": {**rep["per_action"]["reply"], "f1": 0.53}}}
    assert baseline_regressions(rep, worse, 0.02) == ["reply F1 0.5000 < baseline 0.5300 - 0.02"]
    assert baseline_regressions(rep, worse, 0.05) == []
    better_valid = {**rep, "valid_rate": 0.95, "task_id_accuracy": 0.51}
    problems = baseline_regressions(rep, better_valid, 0.02)
    assert problems == ["valid_rate 0.8750 < baseline 0.9500 - 0.02"]
