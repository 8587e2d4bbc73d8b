"""Every ``sraq bench`` command runs through its real entry point and prints the INTERFACES.md keys.

These are smoke runs with tiny sizes: the numbers are printed by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from arq.constants import abort_jobs_ss

ROOT = Path(__file__).resolve().parent.parent


def sraq_json(redis_url: str, *args: str, timeout: float = 100) -> dict[str, object]:
    env = {**os.environ, "SRAQ_REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args, "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(out, dict)
    return out


def leftovers(redis_url: str, prefix: str) -> list[bytes]:
    """Keys and arq abort markers a benchmark left behind under its throw-away ``prefix``."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [*client.scan_iter(match=f"{prefix}*"), *client.scan_iter(match=f"arq:*:{prefix}*")]
        markers = [m for m, _ in client.zscan_iter(abort_jobs_ss, match=f"{prefix}*")]
        return keys + markers
    finally:
        client.close()


def _pcts(value: object, *names: str) -> None:
    assert isinstance(value, dict)
    for name in names:
        assert isinstance(value[name], int | float) and value[name] >= 0


def test_bench_apply(redis_url: str) -> None:
    out = sraq_json(redis_url, "bench", "apply", "-n", "200", "--conversations", "5")
    assert out["applies"] == 200
    _pcts(out["apply_ms"], "p50", "p99")
    assert leftovers(redis_url, "sraq-bench-") == []


@pytest.mark.timeout(150)
def test_bench_loop(redis_url: str) -> None:
    out = sraq_json(
        redis_url, "bench", "loop", "--turns", "400", "--conversations", "20", "--rate", "100", "--seconds", "1"
    )
    assert out["turns"] == 400 and out["conversations"] == 20
    for key in ("throughput_turns_per_s", "floor_turns_per_s", "ratio_to_floor"):
        assert isinstance(out[key], float) and out[key] > 0
    _pcts(out["overhead_ms"], "p50", "p99")
    at_rate = out["at_rate"]
    assert isinstance(at_rate, dict) and at_rate["turns"] == 100  # published by the paced client process
    assert at_rate["warmup_turns"] == 50  # 0.5 s at 100/s went first and is not among the measured turns
    assert 50 < at_rate["offered_turns_per_s"] < 200
    assert at_rate["client_nice"] >= 10  # the client yields CPU to the orchestrator (reported by the client)
    # the collector policy of `sraq orchestrator` (orchestrator/gc_policy.py) is in effect, the model frozen
    assert out["gc"]["thresholds"] == [10_000, 20, 100] and out["gc"]["frozen_objects"] > 10_000
    # where the CPUs went, in ms per turn (a turn costs well over 10 µs and far under 100 ms of anyone's CPU)
    saturated, paced = out["cpu_ms_per_turn_saturated"], at_rate["cpu_ms_per_turn"]
    for cpu in (saturated, paced):
        assert 0.01 < cpu["orchestrator"] < 100 and 0.001 < cpu["redis"] < 100
    assert 0.001 < paced["client"] < 100  # reported by the client process itself
    if out["embedded_processes"]:
        assert 0.01 < saturated["model_processes"] < 100  # the model's child process did the deciding
    # every phase deleted its keys, and arq's job records and abort markers of its relay (no worker ran)
    assert leftovers(redis_url, "sraq-bench-") == []


@pytest.mark.timeout(150)
def test_bench_handoff(redis_url: str) -> None:
    out = sraq_json(redis_url, "bench", "handoff", "-n", "5", "--workers", "2", timeout=140)
    assert out["workers"] == 2
    _pcts(out["handoff_ms"], "p50", "p99")
    _pcts(out["cancel_ms"], "p50", "p99")
    assert leftovers(redis_url, "sraq-handoff-") == []


@pytest.mark.timeout(150)
def test_bench_router(redis_url: str) -> None:
    out = sraq_json(
        redis_url, "bench", "router", "--conversations", "5", "--turns", "4", "--student-ms", "20",
        "--teacher-ms", "50", timeout=140,
    )  # fmt: skip
    _pcts(out["decision_ms"], "p50", "p99")
    _pcts(out["router_overhead_ms"], "p50", "p99")
    cascade = out["cascade"]
    assert isinstance(cascade, dict)
    _pcts(cascade["decision_ms"], "p50", "p99")
    assert 0 <= cascade["escalation_rate"] <= 1
