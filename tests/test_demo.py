"""``sraq demo`` end to end through its real entry point: subprocesses, embedded tier, workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_demo(redis_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SRAQ_REDIS_URL": redis_url, "SRAQ_INTENT_TIERS": "embedded"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--json", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_demo_runs_every_conversation_to_its_expected_ledger(redis_url: str) -> None:
    proc = run_demo(redis_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["problems"] == []
    assert summary["conversations"] == 3 and summary["turns"] == 11
    assert set(summary["decisions"]) == {"reply", "start_task", "update_task", "cancel_task", "noop"}
    d = summary["decisions"]
    assert d["start_task"] >= 5 and d["cancel_task"] >= 1 and d["reply"] >= 2
    # The embedded model may disagree with the script on a turn or two (its decisions depend on which
    # task callbacks arrived first); those are reported as surprises, the end state above is the check.
    assert len(summary["surprises"]) <= 2, summary["surprises"]
    assert summary["max_concurrent_tasks"] >= 2, "tasks of different conversations should overlap"
    assert 0 < summary["decision_ms"]["p50"] <= summary["decision_ms"]["p99"]
    # the human output went to stderr: decisions with tier and confidence, and the final ledgers
    assert "embedded" in proc.stderr and "ledger v" in proc.stderr


def test_demo_without_redis_or_redis_server_fails_clearly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SRAQ_REDIS_URL": "redis://127.0.0.1:1/0",
        "PATH": str(tmp_path),  # no redis-server on PATH
    }
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "redis-server not found" in proc.stderr and "apt-get install redis-server" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
