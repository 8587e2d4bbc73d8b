"""Confidence at the action position, shared first tokens, temperature scaling."""

from __future__ import annotations

import math
import random

import pytest

from intent.calibration import Calibration, ece, fit_temperature, scale
from intent.confidence import TokenCandidate, action_distribution, action_offset, action_targets, early_fixed


def cand(p: float, text: str) -> TokenCandidate:
    return TokenCandidate(math.log(p), 0, text)


def test_json_action_position_renormalised_over_allowed() -> None:
    text = '{"action":"reply","args":{"text":"hi"}}'
    tokens = ['{"', "action", '":"', "reply", '","', "args"]
    top = [None, None, None, [cand(0.6, "reply"), cand(0.2, "start"), cand(0.1, "noop")], None, None]
    dist = action_distribution(
        tokens,
        [0.0] * 6,
        top,
        action_offset(text, "json") or 0,
        action_targets(["reply", "start_task", "noop"], "json"),
    )
    assert dist == pytest.approx({"reply": 0.6 / 0.9, "start_task": 0.2 / 0.9, "noop": 0.1 / 0.9})


def test_masked_candidates_are_ignored() -> None:
    masked = TokenCandidate(-3.4028234663852886e38, 1, "cancel")
    top = [[cand(0.9, "reply"), cand(0.1, "noop"), masked, TokenCandidate(None, 2, "update")]]
    dist = action_distribution(["reply"], [0.0], top, 0, action_targets(["reply", "noop"], "call"))
    assert dist == pytest.approx({"reply": 0.9, "noop": 0.1})


def test_shared_first_token_multiplies_following_positions() -> None:
    # a tokenizer that writes "st" for both start_task and stop_task (hypothetical action names)
    targets = {"start_task": "start_task(", "stop_task": "stop_task(", "reply": "reply("}
    tokens = ["st", "art", "_task", "("]
    top = [
        [cand(0.8, "st"), cand(0.2, "reply")],
        [cand(0.75, "art"), cand(0.25, "op")],
        None,
        None,
    ]
    dist = action_distribution(tokens, [math.log(0.8), math.log(0.75), 0.0, 0.0], top, 0, targets)
    assert dist == pytest.approx({"start_task": 0.6, "stop_task": 0.2, "reply": 0.2})


def test_early_fixed() -> None:
    needs = {"update_task": True, "cancel_task": True, "reply": False, "noop": False, "start_task": False}
    assert early_fixed('{"action":"upd', "json", needs) is None
    assert early_fixed('{"action":"update_task","args":{"task_id":"task-', "json", needs) is None
    assert early_fixed('{"action":"update_task","args":{"task_id":"task-2","expl', "json", needs) == (
        "update_task",
        "task-2",
    )
    assert early_fixed('{"action":"reply","args":{"te', "json", needs) == ("reply", None)
    assert early_fixed("cancel_task(task-7, the us", "call", needs) == ("cancel_task", "task-7")
    assert early_fixed("cancel_task(task-7", "call", needs) is None
    assert early_fixed("start", "call", needs) is None
    assert early_fixed("noop", "call", needs) == ("noop", None)


def test_temperature_scaling_keeps_the_ranking() -> None:
    p = {"reply": 0.7, "noop": 0.2, "start_task": 0.1}
    soft, sharp = scale(p, 2.0), scale(p, 0.5)
    assert max(soft, key=soft.__getitem__) == max(sharp, key=sharp.__getitem__) == "reply"
    assert soft["reply"] < 0.7 < sharp["reply"]
    assert sum(soft.values()) == pytest.approx(1.0)


def test_fit_recovers_overconfidence() -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(600):  # a model that says 0.95 but is right 70% of the time
        label = 0 if rng.random() < 0.7 else 1 + rng.randrange(2)
        rows.append(([0.95, 0.03, 0.02], label))
    cal = fit_temperature(rows)
    assert cal.temperature > 1.5  # softened
    assert cal.nll_after is not None and cal.nll_before is not None and cal.nll_after < cal.nll_before
    assert cal.ece_after is not None and cal.ece_before is not None and cal.ece_after < cal.ece_before
    assert cal.apply({"a": 0.95, "b": 0.03, "c": 0.02})["a"] == pytest.approx(0.7, abs=0.05)


def test_calibration_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "cal.json"
    cal = Calibration(temperature=1.7, samples=10)
    cal.dump(path)
    assert Calibration.load(path) == cal
    assert ece([0.9, 0.9], [True, False]) == pytest.approx(0.4)
